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
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

namespace tpmkey::test {
namespace {

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
void relax_dictionary_attack(const std::string& tcti) {
  TSS2_TCTI_CONTEXT* t = nullptr;
  ESYS_CONTEXT* esys = nullptr;
  if (Tss2_TctiLdr_Initialize(tcti.c_str(), &t) != TSS2_RC_SUCCESS || Esys_Initialize(&esys, t, nullptr) != TSS2_RC_SUCCESS)
    throw std::runtime_error("cannot connect to the new swtpm");
  constexpr UINT32 kMaxTries = 1000, kRecoverySeconds = 1, kLockoutRecoverySeconds = 1;
  TSS2_RC rc = Esys_DictionaryAttackParameters(esys, ESYS_TR_RH_LOCKOUT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                               kMaxTries, kRecoverySeconds, kLockoutRecoverySeconds);
  Esys_Finalize(&esys);
  Tss2_TctiLdr_Finalize(&t);
  if (rc != TSS2_RC_SUCCESS) throw std::runtime_error("cannot set the swtpm's dictionary-attack parameters");
}

}  // namespace

Swtpm::Swtpm() {
  owner_ = getpid();
  dir_ = make_temp_dir("tpmkey-swtpm");
  std::mt19937 rng(std::random_device{}() ^ unsigned(getpid()));
  for (int tries = 0; tries < 200 && !port_; ++tries) {
    int p = 20000 + int(rng() % 20000) * 2;
    if (port_free(p) && port_free(p + 1)) port_ = p;
  }
  if (!port_) throw std::runtime_error("no free port pair for swtpm");
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

Swtpm::~Swtpm() {
  if (getpid() != owner_) return;
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status;
    waitpid(pid_, &status, 0);
  }
  remove_tree(dir_);
}

std::string Swtpm::tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(port_); }

Swtpm& shared_swtpm() {
  static Swtpm* s = new Swtpm;  // lives until exit; killed by the atexit below
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
                  const std::string& stdin_text) {
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
    if (const char* rt = std::getenv("TPMKEY_SUBPROCESS_PRELOAD"); rt && *rt) {
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
  waitpid(pid, &status, 0);
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  remove_tree(dir);
  return r;
}

std::string provider_dir() { return TPMKEY_PROVIDER_DIR; }
std::string tpmkey_bin() { return TPMKEY_CLI; }

std::string write_openssl_cnf(const std::string& dir, bool tpmkey_first, const std::string& tcti,
                              const std::string& keystore) {
  std::string path = dir + (tpmkey_first ? "/tpmkey-first.cnf" : "/default-first.cnf");
  std::ostringstream c;
  c << "openssl_conf = openssl_init\n\n[openssl_init]\nproviders = provider_sect\n\n[provider_sect]\n";
  if (tpmkey_first) c << "tpmkey = tpmkey_sect\ndefault = default_sect\n";
  else c << "default = default_sect\ntpmkey = tpmkey_sect\n";
  c << "\n[default_sect]\nactivate = 1\n\n[tpmkey_sect]\nmodule = " << provider_dir() << "/tpmkey.so\n"
    << "tcti = " << tcti << "\nkeystore = " << keystore << "\nactivate = 1\n";
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
  OSSL_PROVIDER* prov = OSSL_PROVIDER_load(libctx, "tpmkey");
  uint64_t n = 0;
  OSSL_PARAM params[] = {OSSL_PARAM_uint64("tpmkey-tpm-commands", &n), OSSL_PARAM_END};
  bool ok = prov && OSSL_PROVIDER_get_params(prov, params);
  if (prov) OSSL_PROVIDER_unload(prov);
  if (!ok) throw std::runtime_error("cannot read the TPM command counter");
  return n;
}

std::string drain_errors() {
  std::string out;
  unsigned long e;
  const char* data = nullptr;
  int flags = 0;
  while ((e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += buf;
    if (data && (flags & ERR_TXT_STRING)) out += std::string(" ") + data;
    out += "\n";
  }
  return out;
}

}  // namespace tpmkey::test
