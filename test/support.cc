#include "test/support.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include "keystore/ossl.h"
#include "provider/tpm_commands.h"

namespace tpmkey::test {
namespace {

// Ports for swtpm and proxies: 10000-31999, below Linux's ephemeral range (32768+), where
// TIME_WAIT leftovers of client connections would make a bind fail.
constexpr int kPortBase = 10000, kPortPairs = 11000;

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

bool port_free(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = loopback(port);
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

bool can_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = loopback(port);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

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
  pid_ = fork();
  if (pid_ == 0) {
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    execlp("swtpm", "swtpm", "socket", "--tpm2", "--server", server.c_str(), "--ctrl", ctrl.c_str(), "--tpmstate",
           state.c_str(), "--flags", "not-need-init,startup-clear", static_cast<char*>(nullptr));
    _exit(127);
  }
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

Swtpm::~Swtpm() {
  if (getpid() != owner_) return;
  stop();
  remove_tree(dir_);
}

namespace {

bool read_full(int fd, uint8_t* p, size_t n) {
  while (n) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

bool write_full(int fd, const uint8_t* p, size_t n) {
  while (n) {
    ssize_t r = ::write(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

// One TPM command or response: a 10-byte header whose bytes 2..5 are the big-endian total size.
bool read_message(int fd, std::vector<uint8_t>& m) {
  m.assign(10, 0);
  if (!read_full(fd, m.data(), 10)) return false;
  uint32_t size = uint32_t(m[2]) << 24 | uint32_t(m[3]) << 16 | uint32_t(m[4]) << 8 | m[5];
  if (size < 10 || size > 65536) return false;
  m.resize(size);
  return read_full(fd, m.data() + 10, size - 10);
}

int connect_loopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int listen_loopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a = loopback(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 4) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

struct BusProxy::Impl {
  int target = 0, port = 0;
  int listen_data = -1, listen_ctrl = -1;
  mutable std::mutex mu;
  std::string sent;
  uint32_t corrupt_cc = 0;
  int corrupted = 0;
  std::vector<int> fds;  // open connections, shut down on destruction
  std::vector<std::thread> threads;

  void track(int fd) {
    std::lock_guard l(mu);
    fds.push_back(fd);
  }
  // swtpm serves one connection at a time: both ends close as soon as either side does.
  void done(int a, int b) {
    std::lock_guard l(mu);
    for (int fd : {a, b}) {
      if (fd < 0) continue;
      std::erase(fds, fd);
      close(fd);
    }
  }
  // The data channel: command and response framed, so commands are recorded whole.
  void serve_data(int client) {
    int server = connect_loopback(target);
    if (server >= 0) track(server);
    if (server >= 0) relay_messages(client, server);
    done(client, server);
  }
  void relay_messages(int client, int server) {
    std::vector<uint8_t> m;
    while (read_message(client, m)) {
      uint32_t cc = uint32_t(m[6]) << 24 | uint32_t(m[7]) << 16 | uint32_t(m[8]) << 8 | m[9];
      {
        std::lock_guard l(mu);
        sent.append(reinterpret_cast<const char*>(m.data()), m.size());
      }
      if (!write_full(server, m.data(), m.size()) || !read_message(server, m)) break;
      {
        std::lock_guard l(mu);
        if (corrupt_cc && cc == corrupt_cc && m.size() > 30) {
          m[25] ^= 0x01;  // inside the response parameters (after header and parameterSize)
          corrupt_cc = 0;
          ++corrupted;
        }
      }
      if (!write_full(client, m.data(), m.size())) break;
    }
  }
  // The control channel: bytes forwarded both ways as they come.
  void serve_ctrl(int client) {
    int server = connect_loopback(target + 1);
    if (server >= 0) track(server);
    if (server >= 0) relay_bytes(client, server);
    done(client, server);
  }
  void relay_bytes(int client, int server) {
    pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    uint8_t buf[4096];
    while (poll(p, 2, -1) > 0) {
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::read(p[i].fd, buf, sizeof buf);
        if (n <= 0 || !write_full(p[1 - i].fd, buf, size_t(n))) return;
      }
    }
  }
  void accept_loop(int lfd, bool data) {
    for (;;) {
      int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      track(c);
      std::lock_guard l(mu);
      threads.emplace_back([this, c, data] { data ? serve_data(c) : serve_ctrl(c); });
    }
  }
};

BusProxy::BusProxy(int swtpm_port) : impl_(new Impl) {
  impl_->target = swtpm_port;
  std::mt19937 rng(std::random_device{}() ^ unsigned(getpid()));
  for (int tries = 0; tries < 200 && impl_->listen_ctrl < 0; ++tries) {
    int p = kPortBase + int(rng() % kPortPairs) * 2;
    impl_->listen_data = listen_loopback(p);
    if (impl_->listen_data < 0) continue;
    impl_->listen_ctrl = listen_loopback(p + 1);
    if (impl_->listen_ctrl < 0) {
      close(impl_->listen_data);
      impl_->listen_data = -1;
      continue;
    }
    impl_->port = p;
  }
  if (impl_->listen_ctrl < 0) throw std::runtime_error("no free port pair for the bus proxy");
  std::lock_guard l(impl_->mu);
  impl_->threads.emplace_back([this] { impl_->accept_loop(impl_->listen_data, true); });
  impl_->threads.emplace_back([this] { impl_->accept_loop(impl_->listen_ctrl, false); });
}

BusProxy::~BusProxy() {
  shutdown(impl_->listen_data, SHUT_RDWR);
  shutdown(impl_->listen_ctrl, SHUT_RDWR);
  std::vector<std::thread> threads;
  {
    std::lock_guard l(impl_->mu);
    for (int fd : impl_->fds) shutdown(fd, SHUT_RDWR);
  }
  // Accept loops may add threads until they return; join in rounds.
  for (;;) {
    {
      std::lock_guard l(impl_->mu);
      threads.swap(impl_->threads);
      for (int fd : impl_->fds) shutdown(fd, SHUT_RDWR);
    }
    if (threads.empty()) break;
    for (auto& t : threads) t.join();
    threads.clear();
  }
  for (int fd : impl_->fds) close(fd);
  close(impl_->listen_data);
  close(impl_->listen_ctrl);
}

std::string BusProxy::tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(impl_->port); }

std::string BusProxy::sent() const {
  std::lock_guard l(impl_->mu);
  return impl_->sent;
}

std::vector<uint32_t> BusProxy::command_codes() const {
  const std::string s = sent();
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | uint8_t(s[at + i]);
    return v;
  };
  std::vector<uint32_t> codes;
  // Each command: tag (2 bytes), size (4, the whole command), command code (4), ...
  for (size_t at = 0; at + 10 <= s.size();) {
    const uint32_t size = be32(at + 2);
    if (size < 10) break;
    codes.push_back(be32(at + 6));
    at += size;
  }
  return codes;
}

void BusProxy::clear() {
  std::lock_guard l(impl_->mu);
  impl_->sent.clear();
}

void BusProxy::corrupt_next_response(uint32_t command_code) {
  std::lock_guard l(impl_->mu);
  impl_->corrupt_cc = command_code;
}

int BusProxy::corrupted() const {
  std::lock_guard l(impl_->mu);
  return impl_->corrupted;
}

namespace {

pid_t spawn(const std::vector<std::string>& argv, const std::string& log, int extra_fd_target = -1,
            const std::string& extra_fd_file = "") {
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(devnull, 0);
    dup2(out, 1);
    dup2(out, 2);
    if (extra_fd_target >= 0) dup2(open(extra_fd_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600), extra_fd_target);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void stop_child(pid_t& pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 100; ++i) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pid = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  pid = -1;
}

}  // namespace

Abrmd::Abrmd(const std::string& backend_tcti) {
  dir_ = make_temp_dir("tpmkey-abrmd");
  name_ = "com.intel.tss2.Tabrmd.tpmkey" + std::to_string(getpid()) + "x" + std::to_string(std::random_device{}() % 100000);
  dbus_ = spawn({"dbus-daemon", "--session", "--nofork", "--nopidfile", "--nosyslog", "--address=unix:path=" + dir_ + "/bus",
                 "--print-address=3"},
                dir_ + "/dbus.log", 3, dir_ + "/addr");
  std::string addr;
  for (int i = 0; i < 200 && addr.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    addr = read_file(dir_ + "/addr");
  }
  if (addr.empty()) throw std::runtime_error("dbus-daemon did not start (is dbus-daemon installed?)");
  addr = addr.substr(0, addr.find('\n'));
  setenv("DBUS_SESSION_BUS_ADDRESS", addr.c_str(), 1);
  abrmd_ = spawn({"tpm2-abrmd", "--session", "--dbus-name=" + name_, "--tcti=" + backend_tcti, "--allow-root"},
                 dir_ + "/abrmd.log");
  // Ready once a client can connect (abrmd claims its bus name after probing the TPM).
  for (int i = 0; i < 200; ++i) {
    TSS2_TCTI_CONTEXT* t = nullptr;
    if (Tss2_TctiLdr_Initialize(tcti().c_str(), &t) == TSS2_RC_SUCCESS) {
      Tss2_TctiLdr_Finalize(&t);
      return;
    }
    int status;
    if (waitpid(abrmd_, &status, WNOHANG) == abrmd_) {
      abrmd_ = -1;
      throw std::runtime_error("tpm2-abrmd exited at start: " + read_file(dir_ + "/abrmd.log"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("tpm2-abrmd did not become ready");
}

Abrmd::~Abrmd() {
  stop_child(abrmd_);  // flushes what its clients left, while the bus is still up
  stop_child(dbus_);
  unsetenv("DBUS_SESSION_BUS_ADDRESS");
  remove_tree(dir_);
}

std::string Abrmd::tcti() const { return "tabrmd:bus_type=session,bus_name=" + name_; }

std::string Swtpm::tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(port_); }

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

std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

void remove_tree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

CommandResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  const std::string& stdin_text, int timeout_s) {
  std::string dir = make_temp_dir("tpmkey-run");
  std::string in = dir + "/in", out = dir + "/out", err = dir + "/err";
  write_file(in, stdin_text);
  pid_t pid = fork();
  if (pid == 0) {
    setsid();  // no controlling terminal: commands must not prompt
    int fi = open(in.c_str(), O_RDONLY), fo = open(out.c_str(), O_WRONLY | O_CREAT, 0600),
        fe = open(err.c_str(), O_WRONLY | O_CREAT, 0600);
    dup2(fi, 0);
    dup2(fo, 1);
    dup2(fe, 2);
    for (const auto& e : env) putenv(strdup(e.c_str()));
    // Sanitizer builds: uninstrumented programs (openssl) that load our instrumented provider
    // need the sanitizer runtime first; their own exit-time leaks are not ours to judge.
    // Only openssl gets it: other programs (tpm2-tools, curl) deadlock at start with it preloaded.
    const bool loads_provider = std::filesystem::path(argv[0]).filename() == "openssl";
    if (const char* rt = std::getenv("TPMKEY_SUBPROCESS_PRELOAD"); rt && *rt && loads_provider) {
      setenv("LD_PRELOAD", rt, 1);
      setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  CommandResult r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  remove_tree(dir);
  return r;
}

std::string provider_dir() { return TPMKEY_PROVIDER_DIR; }
std::string tpmkey_bin() { return TPMKEY_CLI; }

std::string write_openssl_cnf(const std::string& dir, bool tpmkey_first, const std::string& tcti,
                              const std::string& keystore, const std::string& extra) {
  std::string path = dir + (tpmkey_first ? "/tpmkey-first.cnf" : "/default-first.cnf");
  std::ostringstream c;
  c << "openssl_conf = openssl_init\n\n[openssl_init]\nproviders = provider_sect\n\n[provider_sect]\n";
  if (tpmkey_first) c << "tpmkey = tpmkey_sect\ndefault = default_sect\n";
  else c << "default = default_sect\ntpmkey = tpmkey_sect\n";
  c << "\n[default_sect]\nactivate = 1\n\n[tpmkey_sect]\nmodule = " << provider_dir() << "/tpmkey.so\n"
    << "tcti = " << tcti << "\nkeystore = " << keystore << "\n" << extra << "activate = 1\n";
  write_file(path, c.str());
  return path;
}

OSSL_LIB_CTX* new_configured_libctx(const std::string& cnf) {
  OSSL_LIB_CTX* ctx = OSSL_LIB_CTX_new();
  if (!ctx || !OSSL_LIB_CTX_load_config(ctx, cnf.c_str()))
    throw std::runtime_error("cannot load " + cnf + ": " + drain_errors());
  return ctx;
}

uint64_t tpm_commands(OSSL_LIB_CTX* libctx) {
  uint64_t n = 0;
  if (!read_tpm_commands(libctx, &n)) throw std::runtime_error("cannot read the TPM command counter");
  return n;
}

std::string drain_errors() { return drain_openssl_errors("\n"); }

// Verification happens here: a library context holding the default provider and nothing else.
OSSL_LIB_CTX* default_only() {
  static OSSL_LIB_CTX* ctx = [] {
    OSSL_LIB_CTX* c = OSSL_LIB_CTX_new();
    OSSL_PROVIDER_load(c, "default");
    return c;
  }();
  return ctx;
}

// The key's public half, re-read from SubjectPublicKeyInfo into the default-only context.
PkeyPtr public_copy(EVP_PKEY* pkey) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(pkey, &der);
  const unsigned char* p = der;
  EVP_PKEY* pub = n > 0 ? d2i_PUBKEY_ex(nullptr, &p, n, default_only(), nullptr) : nullptr;
  OPENSSL_free(der);
  return PkeyPtr(pub, EVP_PKEY_free);
}

std::vector<unsigned char> digest_sign(OSSL_LIB_CTX* lib, EVP_PKEY* key, const std::string& msg, SignOpts o) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  std::vector<unsigned char> sig;
  size_t len = 0;
  if (EVP_DigestSignInit_ex(md, &pctx, o.md, lib, nullptr, key, nullptr) == 1 &&
      (!o.padding || EVP_PKEY_CTX_set_rsa_padding(pctx, o.padding) == 1) &&
      (o.padding != RSA_PKCS1_PSS_PADDING || EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1) &&
      EVP_DigestSign(md, nullptr, &len, reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) == 1) {
    sig.resize(len);
    if (EVP_DigestSign(md, sig.data(), &len, reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) == 1)
      sig.resize(len);
    else
      sig.clear();
  }
  EVP_MD_CTX_free(md);
  return sig;
}

bool digest_verify(EVP_PKEY* pub, const std::string& msg, const std::vector<unsigned char>& sig, SignOpts o) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  bool ok = EVP_DigestVerifyInit_ex(md, &pctx, o.md, default_only(), nullptr, pub, nullptr) == 1 &&
            (!o.padding || EVP_PKEY_CTX_set_rsa_padding(pctx, o.padding) == 1) &&
            (o.padding != RSA_PKCS1_PSS_PADDING || EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1) &&
            EVP_DigestVerify(md, sig.data(), sig.size(), reinterpret_cast<const unsigned char*>(msg.data()),
                             msg.size()) == 1;
  EVP_MD_CTX_free(md);
  return ok;
}

PkeyPtr generate_key(OSSL_LIB_CTX* lib, const char* type, const char* group, size_t bits, const char* user_auth) {
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(lib, type, "provider=tpmkey");
  EVP_PKEY* key = nullptr;
  OSSL_PARAM params[3];
  int n = 0;
  if (group) params[n++] = OSSL_PARAM_construct_utf8_string("group", const_cast<char*>(group), 0);
  else params[n++] = OSSL_PARAM_construct_size_t("bits", &bits);
  if (user_auth) params[n++] = OSSL_PARAM_construct_utf8_string(kParamUserAuth, const_cast<char*>(user_auth), 0);
  params[n] = OSSL_PARAM_construct_end();
  if (!ctx || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_CTX_set_params(ctx, params) != 1 ||
      EVP_PKEY_generate(ctx, &key) != 1)
    key = nullptr;
  EVP_PKEY_CTX_free(ctx);
  return PkeyPtr(key, EVP_PKEY_free);
}

bool store_key(EVP_PKEY* key, const std::string& path) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  BIO* b = BIO_new_file(path.c_str(), "w");
  bool ok = b && PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  BIO_free(b);
  return ok;
}

PkeyPtr load_key(OSSL_LIB_CTX* lib, const std::string& uri, int expect) {
  OSSL_STORE_CTX* s = OSSL_STORE_open_ex(uri.c_str(), lib, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
  EVP_PKEY* key = nullptr;
  if (s) {
    if (expect) OSSL_STORE_expect(s, expect);
    while (!key && !OSSL_STORE_eof(s)) {
      OSSL_STORE_INFO* info = OSSL_STORE_load(s);
      if (!info) break;
      if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) key = OSSL_STORE_INFO_get1_PKEY(info);
      if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PUBKEY) key = OSSL_STORE_INFO_get1_PUBKEY(info);
      OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(s);
  }
  return PkeyPtr(key, EVP_PKEY_free);
}

std::vector<unsigned char> sha(const char* md, const std::string& msg) {
  std::vector<unsigned char> d(EVP_MAX_MD_SIZE);
  unsigned int n = 0;
  EVP_Q_digest(default_only(), md, nullptr, msg.data(), msg.size(), d.data(), reinterpret_cast<size_t*>(&n));
  d.resize(size_t(EVP_MD_get_size(EVP_get_digestbyname(md))));
  return d;
}

}  // namespace tpmkey::test
