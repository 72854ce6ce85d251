#include "test/swtpm.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include "test/loopback.h"
#include "test/process.h"

namespace tpmkey::test {
namespace {

// Lets tests try wrong passwords: the simulator's default dictionary-attack settings lock it
// out after a handful of authorization failures, and every test of a binary shares one swtpm.
void relax_dictionary_attack(const std::string& tcti) { set_dictionary_attack(tcti, 1000, 1); }

}  // namespace

void set_dictionary_attack(const std::string& tcti, uint32_t max_tries, uint32_t recovery_s) {
  TSS2_TCTI_CONTEXT* t = nullptr;
  ESYS_CONTEXT* esys = nullptr;
  if (Tss2_TctiLdr_Initialize(tcti.c_str(), &t) != TSS2_RC_SUCCESS || Esys_Initialize(&esys, t, nullptr) != TSS2_RC_SUCCESS)
    throw std::runtime_error("cannot connect to the swtpm");
  constexpr UINT32 kLockoutRecoverySeconds = 1;
  TSS2_RC rc = Esys_DictionaryAttackParameters(esys, ESYS_TR_RH_LOCKOUT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                               max_tries, recovery_s, kLockoutRecoverySeconds);
  if (rc == TSS2_RC_SUCCESS)  // start from zero failures
    rc = Esys_DictionaryAttackLockReset(esys, ESYS_TR_RH_LOCKOUT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE);
  Esys_Finalize(&esys);
  Tss2_TctiLdr_Finalize(&t);
  if (rc != TSS2_RC_SUCCESS) throw std::runtime_error("cannot set the swtpm's dictionary-attack parameters");
}

Swtpm::Swtpm() {
  owner_ = getpid();
  dir_ = make_temp_dir("tpmkey-swtpm");
  std::mt19937 rng(std::random_device{}() ^ unsigned(getpid()));
  for (int tries = 0; tries < 200 && !port_; ++tries) {
    int p = kPortBase + int(rng() % kPortPairs) * 2;
    if (port_free(p) && port_free(p + 1)) port_ = p;
  }
  if (!port_) throw std::runtime_error("no free port pair for swtpm");
  start();
}

void Swtpm::start() {
  std::string server = "type=tcp,port=" + std::to_string(port_) + ",bindaddr=127.0.0.1";
  std::string ctrl = "type=tcp,port=" + std::to_string(port_ + 1) + ",bindaddr=127.0.0.1";
  std::string state = "dir=" + dir_;
  pid_ = launch({.argv = {"swtpm", "socket", "--tpm2", "--server", server, "--ctrl", ctrl, "--tpmstate", state, "--flags",
                          "not-need-init,startup-clear"},
                 .in = "/dev/null",
                 .out = "/dev/null"});
  if (pid_ < 0) throw std::runtime_error(std::string("cannot start swtpm (is it installed?): ") + std::strerror(errno));
  for (int i = 0; i < 500; ++i) {
    if (can_connect(port_)) {
      relax_dictionary_attack(tcti());
      return;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("swtpm exited at start (is swtpm installed?)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("swtpm did not start");
}

void Swtpm::stop() {
  if (pid_ > 0) {
    kill(pid_, SIGCONT);  // a paused swtpm could not act on SIGTERM
    kill(pid_, SIGTERM);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
}

void Swtpm::restart() {
  stop();
  // The kernel may hold the ports in TIME_WAIT for a moment; swtpm sets SO_REUSEADDR.
  start();
}

void Swtpm::kill_hard() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
}

void Swtpm::pause() {
  if (pid_ > 0) kill(pid_, SIGSTOP);
}

void Swtpm::resume() {
  if (pid_ > 0) kill(pid_, SIGCONT);
}

void Swtpm::replace() {
  stop();
  remove_tree(dir_);
  std::filesystem::create_directories(dir_);
  start();
}

std::string Swtpm::tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(port_); }

Swtpm::~Swtpm() {
  if (getpid() != owner_) return;
  stop();
  remove_tree(dir_);
}

Swtpm& shared_swtpm() {
  static Swtpm* s = [] {
    auto* t = new Swtpm;  // lives until exit; killed by the atexit below
    // tpmkey pins the first SRK it sees in the keystore it uses. A command run without a
    // keystore of its own uses the default one under $XDG_DATA_HOME: keep that in this
    // binary's swtpm state directory, never in the user's home.
    setenv("XDG_DATA_HOME", (t->state_dir() + "/xdg").c_str(), 1);
    return t;
  }();
  static bool registered = [] {
    std::atexit([] { delete s; });
    return true;
  }();
  (void)registered;
  return *s;
}

std::string TpmHandles::describe() const {
  std::ostringstream o;
  auto list = [&](const char* what, const std::vector<uint32_t>& v) {
    o << what << ":";
    char buf[16];
    for (uint32_t h : v) {
      std::snprintf(buf, sizeof buf, " 0x%08x", h);
      o << buf;
    }
    o << "; ";
  };
  list("transient objects", transient);
  list("loaded sessions", loaded_sessions);
  list("saved sessions", saved_sessions);
  return o.str();
}

TpmHandles tpm_handles(const std::string& tcti) {
  TpmHandles out;
  TSS2_TCTI_CONTEXT* t = nullptr;
  ESYS_CONTEXT* esys = nullptr;
  if (Tss2_TctiLdr_Initialize(tcti.c_str(), &t) != TSS2_RC_SUCCESS || Esys_Initialize(&esys, t, nullptr) != TSS2_RC_SUCCESS)
    throw std::runtime_error("cannot connect to the TPM to check its handles");
  auto get = [&](TPM2_HANDLE first, std::vector<uint32_t>& v) {
    TPMS_CAPABILITY_DATA* cap = nullptr;
    if (Esys_GetCapability(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, first, TPM2_MAX_CAP_HANDLES,
                           nullptr, &cap) != TSS2_RC_SUCCESS)
      throw std::runtime_error("GetCapability failed");
    for (uint32_t i = 0; i < cap->data.handles.count; ++i) v.push_back(cap->data.handles.handle[i]);
    Esys_Free(cap);
  };
  get(TPM2_TRANSIENT_FIRST, out.transient);
  get(TPM2_LOADED_SESSION_FIRST, out.loaded_sessions);
  get(TPM2_ACTIVE_SESSION_FIRST, out.saved_sessions);
  // Loaded sessions are also reported as active; keep only the saved ones there.
  std::erase_if(out.saved_sessions, [&](uint32_t h) {
    for (uint32_t l : out.loaded_sessions)
      if ((l & 0xFFFFFF) == (h & 0xFFFFFF)) return true;
    return false;
  });
  Esys_Finalize(&esys);
  Tss2_TctiLdr_Finalize(&t);
  return out;
}

uint32_t lockout_counter(const std::string& tcti) {
  TSS2_TCTI_CONTEXT* t = nullptr;
  ESYS_CONTEXT* esys = nullptr;
  if (Tss2_TctiLdr_Initialize(tcti.c_str(), &t) != TSS2_RC_SUCCESS || Esys_Initialize(&esys, t, nullptr) != TSS2_RC_SUCCESS)
    throw std::runtime_error("cannot connect to the TPM to read its lockout counter");
  TPMS_CAPABILITY_DATA* cap = nullptr;
  uint32_t value = UINT32_MAX;
  if (Esys_GetCapability(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES, TPM2_PT_LOCKOUT_COUNTER,
                         1, nullptr, &cap) == TSS2_RC_SUCCESS &&
      cap->data.tpmProperties.count == 1 && cap->data.tpmProperties.tpmProperty[0].property == TPM2_PT_LOCKOUT_COUNTER)
    value = cap->data.tpmProperties.tpmProperty[0].value;
  Esys_Free(cap);
  Esys_Finalize(&esys);
  Tss2_TctiLdr_Finalize(&t);
  if (value == UINT32_MAX) throw std::runtime_error("cannot read TPM2_PT_LOCKOUT_COUNTER");
  return value;
}

struct SilentTpm::Impl {
  int listen_fd = -1, port = 0;
  std::thread acceptor;
  std::mutex mu;
  std::vector<int> clients;
};

SilentTpm::SilentTpm() : impl_(new Impl) {
  std::mt19937 rng(std::random_device{}() ^ unsigned(getpid()));
  for (int tries = 0; tries < 200 && impl_->listen_fd < 0; ++tries) {
    int p = kPortBase + int(rng() % kPortPairs) * 2;
    impl_->listen_fd = listen_loopback(p);
    if (impl_->listen_fd >= 0) impl_->port = p;
  }
  if (impl_->listen_fd < 0) throw std::runtime_error("no free port for the silent TPM");
  impl_->acceptor = std::thread([i = impl_.get()] {
    for (;;) {
      int c = accept4(i->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      std::lock_guard l(i->mu);
      i->clients.push_back(c);  // read nothing back, answer nothing
    }
  });
}

SilentTpm::~SilentTpm() {
  shutdown(impl_->listen_fd, SHUT_RDWR);
  impl_->acceptor.join();
  close(impl_->listen_fd);
  for (int c : impl_->clients) close(c);
}

std::string SilentTpm::tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(impl_->port); }

}  // namespace tpmkey::test
