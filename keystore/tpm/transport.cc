#include "keystore/tpm/transport.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include <tss2/tss2_tctildr.h>

namespace tpmkey {
namespace {

constexpr uint64_t kMagic = 0x74706d6b65796374ull;  // "tpmkeyct"

Error unreachable(std::string detail) { return make_error(Reason::kTpmUnreachable, std::move(detail)); }

void* load_library(const std::string& file, Status* st) {
  void* h = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    std::string why = e ? e : "dlopen failed";  // "FILE: reason"
    if (why.rfind(file + ": ", 0) == 0) why.erase(0, file.size() + 2);
    *st = unreachable("cannot load " + file + ": " + why);
  }
  return h;
}

// A TCTI module of tpm2-tss (device, tabrmd, mssim, ...), or tctildr's default.
class ModuleLink final : public Link {
 public:
  ~ModuleLink() override {
    if (inner_ && ldr_finalize_) {
      ldr_finalize_(&inner_);
    } else if (inner_) {
      Tss2_Tcti_Finalize(inner_);
      std::free(inner_);
    }
    if (module_) dlclose(module_);
    std::free(config_);
  }

  Status open(const std::string& spec) {
    // Split as tctildr does: the module name up to the first ':', its configuration after it.
    const size_t colon = spec.find(':');
    if (colon != std::string::npos && colon + 1 < spec.size()) {
      config_ = strdup(spec.c_str() + colon + 1);
      if (!config_) return make_error(Reason::kInternal, "out of memory");
    }
    name_ = spec.substr(0, colon);
    TPMKEY_TRY(spec.empty() ? open_default() : open_module());
    // The modules open their descriptors without close-on-exec: a program tpmkey runs in must not
    // inherit the TPM connection.
    TSS2_TCTI_POLL_HANDLE fds[4];
    size_t n = 4;
    if (Tss2_Tcti_GetPollHandles(inner_, fds, &n) == TSS2_RC_SUCCESS) {
      for (size_t i = 0; i < n && i < 4; ++i) fcntl(fds[i].fd, F_SETFD, FD_CLOEXEC);
    }
    return Status::Ok();
  }

  TSS2_RC transmit(const uint8_t* cmd, size_t size, Deadline) override {
    TSS2_RC rc = Tss2_Tcti_Transmit(inner_, size, cmd);
    if (rc != TSS2_RC_SUCCESS) error_ = "sending the command failed: " + describe_rc(rc);
    return rc;
  }

  TSS2_RC receive(size_t* size, uint8_t* rsp, Deadline deadline) override {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left < 0) left = 0;
    // The device and tpm2-abrmd modules wait with a timeout themselves; for the others tpmkey
    // waits on their descriptors and then lets them read.
    if (!native_timeout()) {
      TSS2_TCTI_POLL_HANDLE fds[4];
      size_t n = 4;
      if (Tss2_Tcti_GetPollHandles(inner_, fds, &n) == TSS2_RC_SUCCESS && n > 0 && n <= 4) {
        pollfd p[4];
        for (size_t i = 0; i < n; ++i) p[i] = {fds[i].fd, POLLIN, 0};
        int r;
        do r = poll(p, n, int(left)); while (r < 0 && errno == EINTR);
        if (r == 0) {
          timed_out_ = true;
          return TSS2_TCTI_RC_IO_ERROR;
        }
      }
      left = TSS2_TCTI_TIMEOUT_BLOCK;
    }
    TSS2_RC rc = Tss2_Tcti_Receive(inner_, size, rsp, int32_t(left));
    if ((rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_TRY_AGAIN) {
      timed_out_ = true;
      return TSS2_TCTI_RC_IO_ERROR;
    }
    if (rc != TSS2_RC_SUCCESS) error_ = "receiving the response failed: " + describe_rc(rc);
    return rc;
  }

  bool continuous() const override { return native_timeout(); }
  bool native_timeout() const { return name_ == "device" || name_ == "tabrmd"; }

  void forget_in_child() override {
    TSS2_TCTI_POLL_HANDLE fds[4];
    size_t n = 4;
    if (inner_ && Tss2_Tcti_GetPollHandles(inner_, fds, &n) == TSS2_RC_SUCCESS) {
      for (size_t i = 0; i < n && i < 4; ++i) close(fds[i].fd);
    }
    inner_ = nullptr;  // the parent's: neither finalized nor freed here
    module_ = nullptr;
  }

 private:
  // tctildr's default search.
  Status open_default() {
    Status st;
    module_ = load_library("libtss2-tctildr.so.0", &st);
    if (!module_) return st;
    auto init = reinterpret_cast<decltype(&Tss2_TctiLdr_Initialize)>(dlsym(module_, "Tss2_TctiLdr_Initialize"));
    auto fin = reinterpret_cast<decltype(&Tss2_TctiLdr_Finalize)>(dlsym(module_, "Tss2_TctiLdr_Finalize"));
    if (!init || !fin) return unreachable("libtss2-tctildr.so.0 lacks Tss2_TctiLdr_Initialize");
    if (TSS2_RC rc = init(nullptr, &inner_); rc != TSS2_RC_SUCCESS) {
      inner_ = nullptr;
      return unreachable(describe_rc(rc));
    }
    ldr_finalize_ = fin;
    return Status::Ok();
  }

  // The TCTI module `name_`, initialized with `config_` (nullptr: the module's default).
  Status open_module() {
    const bool is_file = name_.find('/') != std::string::npos || name_.find(".so") != std::string::npos;
    const std::string file = is_file ? name_ : "libtss2-tcti-" + name_ + ".so.0";
    Status st;
    module_ = load_library(file, &st);
    if (!module_) return st;
    auto info_fn = reinterpret_cast<TSS2_TCTI_INFO_FUNC>(dlsym(module_, TSS2_TCTI_INFO_SYMBOL));
    const TSS2_TCTI_INFO* info = info_fn ? info_fn() : nullptr;
    if (!info || !info->init) return unreachable(file + " is not a TCTI module (no " TSS2_TCTI_INFO_SYMBOL ")");
    size_t size = 0;
    TSS2_RC rc = info->init(nullptr, &size, config_);
    if (rc == TSS2_RC_SUCCESS) {
      inner_ = static_cast<TSS2_TCTI_CONTEXT*>(std::calloc(1, size));
      if (!inner_) return make_error(Reason::kInternal, "out of memory");
      rc = info->init(inner_, &size, config_);
    }
    if (rc != TSS2_RC_SUCCESS) {
      std::free(inner_);
      inner_ = nullptr;
      return unreachable(describe_rc(rc));
    }
    return Status::Ok();
  }

  std::string name_;
  TSS2_TCTI_CONTEXT* inner_ = nullptr;
  void* module_ = nullptr;  // dlopen handle: the TCTI module, or libtss2-tctildr for the default
  char* config_ = nullptr;  // what the module was initialized with: kept for as long as it runs
  decltype(&Tss2_TctiLdr_Finalize) ldr_finalize_ = nullptr;  // set when tctildr made `inner_`
};

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

}  // namespace

void Link::explain_timeout(std::chrono::milliseconds timeout) {
  const auto ms = timeout.count();
  char buf[32];
  if (ms % 1000 == 0) std::snprintf(buf, sizeof buf, "%lld s", static_cast<long long>(ms / 1000));
  else std::snprintf(buf, sizeof buf, "%.3g s", double(ms) / 1000);
  error_ = std::string("timed out after ") + buf + ": the TPM did not answer" + (error_.empty() ? "" : " (" + error_ + ")");
}

namespace {

std::mutex g_inprocess_mu;
std::map<std::string, std::function<std::unique_ptr<Link>()>>& inprocess_links() {
  static std::map<std::string, std::function<std::unique_ptr<Link>()>> links;
  return links;
}

}  // namespace

void register_inprocess_link(const std::string& name, std::function<std::unique_ptr<Link>()> make) {
  std::lock_guard lock(g_inprocess_mu);
  inprocess_links()[name] = std::move(make);
}

Result<std::unique_ptr<Link>> open_link(const std::string& spec) {
  const std::string name = spec.substr(0, spec.find(':'));
  if (name == "swtpm") return open_swtpm_link(spec.size() > name.size() + 1 ? spec.substr(name.size() + 1) : "");
  if (name == "inprocess") {
    const std::string which = spec.size() > name.size() + 1 ? spec.substr(name.size() + 1) : "";
    std::lock_guard lock(g_inprocess_mu);
    auto it = inprocess_links().find(which);
    if (it == inprocess_links().end())
      return make_error(Reason::kTpmUnreachable, "no in-process TPM named \"" + which + "\"");
    return it->second();
  }
  auto link = std::make_unique<ModuleLink>();
  TPMKEY_TRY(link->open(spec));
  return std::unique_ptr<Link>(std::move(link));
}

// The TCTI structure tss2-sys sees: the common header first, as the TSS casts to it.
struct Transport::Tcti {
  TSS2_TCTI_CONTEXT_COMMON_V2 common{};
  Transport* owner = nullptr;
  Timeouts timeouts;
  std::atomic<uint64_t>* counter = nullptr;
  Deadline deadline{};
  Millis timeout{};

  static Tcti* self(TSS2_TCTI_CONTEXT* c) { return reinterpret_cast<Tcti*>(c); }
  static TSS2_RC transmit(TSS2_TCTI_CONTEXT* c, size_t size, const uint8_t* cmd) {
    Tcti* t = self(c);
    t->counter->fetch_add(1, std::memory_order_relaxed);
    const uint32_t cc = size >= 10 ? be32(cmd + 6) : 0;
    const bool keygen = cc == TPM2_CC_Create || cc == TPM2_CC_CreatePrimary || cc == TPM2_CC_CreateLoaded;
    t->timeout = keygen ? t->timeouts.keygen : t->timeouts.command;
    t->deadline = std::chrono::steady_clock::now() + t->timeout;
    Link& link = *t->owner->link_;
    link.start_command();
    TSS2_RC rc = link.transmit(cmd, size, t->deadline);
    if (rc != TSS2_RC_SUCCESS && link.timed_out()) link.explain_timeout(t->timeout);
    return rc;
  }
  static TSS2_RC receive(TSS2_TCTI_CONTEXT* c, size_t* size, uint8_t* rsp, int32_t) {
    Tcti* t = self(c);
    Link& link = *t->owner->link_;
    TSS2_RC rc = link.receive(size, rsp, t->deadline);
    if (rc != TSS2_RC_SUCCESS && link.timed_out()) link.explain_timeout(t->timeout);
    return rc;
  }
  static void finalize(TSS2_TCTI_CONTEXT*) {}  // the Transport owns the link
  static TSS2_RC cancel(TSS2_TCTI_CONTEXT*) { return TSS2_TCTI_RC_NOT_IMPLEMENTED; }
  static TSS2_RC get_poll_handles(TSS2_TCTI_CONTEXT*, TSS2_TCTI_POLL_HANDLE*, size_t*) {
    return TSS2_TCTI_RC_NOT_IMPLEMENTED;
  }
  static TSS2_RC set_locality(TSS2_TCTI_CONTEXT*, uint8_t) { return TSS2_TCTI_RC_NOT_IMPLEMENTED; }
  static TSS2_RC make_sticky(TSS2_TCTI_CONTEXT*, TPM2_HANDLE*, uint8_t) { return TSS2_TCTI_RC_NOT_IMPLEMENTED; }
};

Result<std::unique_ptr<Transport>> Transport::open(const std::string& spec, const Timeouts& timeouts,
                                                   std::atomic<uint64_t>* counter) {
  const std::string what = "connect(" + (spec.empty() ? std::string("default TCTI") : spec) + ")";
  auto link = open_link(spec);
  if (!link) return link.take_error().context(what);
  std::unique_ptr<Transport> t(new Transport);
  t->link_ = std::move(*link);
  t->tcti_ = std::make_unique<Tcti>();
  Tcti& c = *t->tcti_;
  c.common.v1.magic = kMagic;
  c.common.v1.version = 2;
  c.common.v1.transmit = Tcti::transmit;
  c.common.v1.receive = Tcti::receive;
  c.common.v1.finalize = Tcti::finalize;
  c.common.v1.cancel = Tcti::cancel;
  c.common.v1.getPollHandles = Tcti::get_poll_handles;
  c.common.v1.setLocality = Tcti::set_locality;
  c.common.makeSticky = Tcti::make_sticky;
  c.owner = t.get();
  c.timeouts = timeouts;
  c.counter = counter;
  return t;
}

Transport::~Transport() = default;

TSS2_TCTI_CONTEXT* Transport::tcti() { return reinterpret_cast<TSS2_TCTI_CONTEXT*>(tcti_.get()); }

}  // namespace tpmkey
