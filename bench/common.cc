#include "bench/common.h"

#include "bench/benchmarks.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <tss2/tss2_sys.h>
#include <tss2/tss2_tctildr.h>

#include "keystore/ossl.h"
#include "provider/tpm_commands.h"

extern char** environ;

namespace tpmkey::bench {
namespace {

Options g_options;

const unsigned char kMessage[64] = "tpmkey benchmark: a 64-byte message, hashed in software first.";

std::string write_file(const std::string& name, const std::string& text) {
  std::string path = options().workdir + "/" + name;
  std::ofstream f(path, std::ios::trunc);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + path);
  return path;
}

LibCtxPtr libctx_from(const std::string& cnf) {
  LibCtxPtr ctx(OSSL_LIB_CTX_new());
  if (!ctx || !OSSL_LIB_CTX_load_config(ctx.get(), cnf.c_str()))
    throw std::runtime_error("cannot load " + cnf + ": " + ossl_errors());
  return ctx;
}

// The RSA padding parameters for `a` (empty list for ECDSA), optionally with the digest name.
struct SignParams {
  char digest[8] = "SHA256";
  char pss[4] = "pss";
  char pkcs1[6] = "pkcs1";
  char saltlen[7] = "digest";
  OSSL_PARAM p[4];
  SignParams(Alg a, bool with_digest) {
    int n = 0;
    if (with_digest) p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, digest, 0);
    if (a == Alg::kRsaPss) {
      p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, pss, 0);
      p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, saltlen, 0);
    } else if (a == Alg::kRsaPkcs1) {
      p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, pkcs1, 0);
    }
    p[n] = OSSL_PARAM_construct_end();
  }
};

std::mutex g_problems_mu;

}  // namespace

const Options& options() { return g_options; }
void set_options(const Options& o) { g_options = o; }

const char* alg_name(Alg a) {
  switch (a) {
    case Alg::kEcdsaP256: return "ecdsa-p256";
    case Alg::kRsaPkcs1: return "rsa2048-pkcs1";
    case Alg::kRsaPss: return "rsa2048-pss";
  }
  return "?";
}

const char* alg_label(Alg a) {
  switch (a) {
    case Alg::kEcdsaP256: return "ECDSA P-256";
    case Alg::kRsaPkcs1: return "RSA-2048 PKCS#1 v1.5";
    case Alg::kRsaPss: return "RSA-2048 PSS";
  }
  return "?";
}

bool is_rsa(Alg a) { return a != Alg::kEcdsaP256; }

const unsigned char* message() { return kMessage; }
size_t message_size() { return sizeof kMessage; }
const unsigned char* message_digest() {
  static const auto digest = [] {
    std::vector<unsigned char> d(SHA256_DIGEST_LENGTH);
    SHA256(kMessage, sizeof kMessage, d.data());
    return d;
  }();
  return digest.data();
}

std::string tpmkey_uri(Alg a) { return is_rsa(a) ? "tpm2:bench-rsa" : "tpm2:bench-ec"; }
std::string tpm2_openssl_key_file(Alg a) {
  return options().workdir + (is_rsa(a) ? "/tpm2-openssl-rsa.pem" : "/tpm2-openssl-ec.pem");
}
std::string software_key_file(Alg a) { return options().workdir + (is_rsa(a) ? "/soft-rsa.pem" : "/soft-ec.pem"); }

const char* dec_name(Dec d) {
  switch (d) {
    case Dec::kRsaPkcs1: return "rsa2048-decrypt-pkcs1";
    case Dec::kRsaOaep: return "rsa2048-decrypt-oaep";
    case Dec::kEcdh: return "ecdh-p256";
  }
  return "?";
}

const char* dec_label(Dec d) {
  switch (d) {
    case Dec::kRsaPkcs1: return "RSA-2048 decrypt PKCS#1 v1.5";
    case Dec::kRsaOaep: return "RSA-2048 decrypt OAEP SHA-256";
    case Dec::kEcdh: return "ECDH P-256";
  }
  return "?";
}

std::string tpmkey_dec_uri(Dec d) { return d == Dec::kEcdh ? "tpm2:bench-ecdh" : "tpm2:bench-rsa-dec"; }

const std::vector<unsigned char>& plaintext() {
  static const std::vector<unsigned char> p = [] {
    const char text[] = "tpmkey bench: a 32-byte secret.";
    return std::vector<unsigned char>(text, text + 32);
  }();
  return p;
}

PkeyPtr public_copy(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int der_len = i2d_PUBKEY(key, &der);
  if (der_len <= 0) return nullptr;
  const unsigned char* p = der;
  PkeyPtr pub(d2i_PUBKEY(nullptr, &p, der_len));
  OPENSSL_free(der);
  return pub;
}

std::vector<unsigned char> encrypt_to(EVP_PKEY* pub, Dec d) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pub, "provider=default"));
  std::vector<unsigned char> out(512);
  size_t len = out.size();
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), d == Dec::kRsaOaep ? RSA_PKCS1_OAEP_PADDING : RSA_PKCS1_PADDING) != 1 ||
      (d == Dec::kRsaOaep && (EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), EVP_sha256()) != 1 ||
                              EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), EVP_sha256()) != 1)) ||
      EVP_PKEY_encrypt(ctx.get(), out.data(), &len, plaintext().data(), plaintext().size()) != 1)
    return {};
  out.resize(len);
  return out;
}

PkeyPtr ecdh_peer_private() {
  FILE* f = std::fopen(software_key_file(Alg::kEcdsaP256).c_str(), "r");
  if (!f) return nullptr;
  PkeyPtr key(PEM_read_PrivateKey(f, nullptr, nullptr, nullptr));
  std::fclose(f);
  return key;
}

PkeyPtr ecdh_peer_public() {
  PkeyPtr priv = ecdh_peer_private();
  return priv ? public_copy(priv.get()) : nullptr;
}

std::vector<unsigned char> software_ecdh(EVP_PKEY* priv, EVP_PKEY* peer) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, priv, "provider=default"));
  size_t len = 0;
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer) != 1 ||
      EVP_PKEY_derive(ctx.get(), nullptr, &len) != 1)
    return {};
  std::vector<unsigned char> out(len);
  if (EVP_PKEY_derive(ctx.get(), out.data(), &len) != 1) return {};
  out.resize(len);
  return out;
}

std::string counting_tcti() { return options().counting_tcti_module + ":" + options().tcti; }

uint64_t counted_commands() {
  // The module stays loaded for the whole run (RTLD_NODELETE), so its counter never resets.
  static auto fn = [] {
    void* h = dlopen(options().counting_tcti_module.c_str(), RTLD_NOW | RTLD_NODELETE);
    if (!h) throw std::runtime_error(std::string("cannot load the counting TCTI: ") + dlerror());
    auto f = reinterpret_cast<uint64_t (*)()>(dlsym(h, "tpmkey_bench_tcti_commands"));
    if (!f) throw std::runtime_error("the counting TCTI has no tpmkey_bench_tcti_commands");
    return f;
  }();
  return fn();
}

LibCtxPtr tpmkey_libctx(bool counting) {
  auto write = [](bool counted) {
    std::ostringstream c;
    c << "openssl_conf = openssl_init\n\n[openssl_init]\nproviders = provider_sect\n\n"
      << "[provider_sect]\ndefault = default_sect\ntpmkey = tpmkey_sect\n\n"
      << "[default_sect]\nactivate = 1\n\n"
      << "[tpmkey_sect]\nmodule = " << options().provider_dir << "/tpmkey.so\n"
      << "tcti = " << (counted ? counting_tcti() : options().tcti) << "\nkeystore = " << options().keystore
      << "\nactivate = 1\n";
    return write_file(counted ? "tpmkey-counted.cnf" : "tpmkey.cnf", c.str());
  };
  static const std::string plain = write(false), counted = write(true);
  return libctx_from(counting ? counted : plain);
}

LibCtxPtr tpm2_openssl_libctx() {
  static const std::string cnf = [] {
    std::ostringstream c;
    c << "openssl_conf = openssl_init\n\n[openssl_init]\nproviders = provider_sect\n\n"
      << "[provider_sect]\ndefault = default_sect\ntpm2 = tpm2_sect\n\n"
      << "[default_sect]\nactivate = 1\n\n"
      << "[tpm2_sect]\ntcti = " << counting_tcti() << "\nactivate = 1\n";  // see main(): TPM2OPENSSL_TCTI
    return write_file("tpm2-openssl.cnf", c.str());
  }();
  LibCtxPtr ctx = libctx_from(cnf);
  if (!OSSL_PROVIDER_available(ctx.get(), "tpm2"))  // its init connects; OpenSSL 3.0 skips it silently
    throw std::runtime_error("the tpm2 provider did not start (cannot reach the TPM?): " + ossl_errors());
  return ctx;
}

uint64_t tpmkey_commands(OSSL_LIB_CTX* libctx) {
  uint64_t n = 0;
  if (!read_tpm_commands(libctx, &n)) throw std::runtime_error("cannot read tpmkey-tpm-commands: " + ossl_errors());
  return n;
}

PkeyPtr load_private_key(OSSL_LIB_CTX* libctx, const std::string& uri, const char* propq) {
  OSSL_STORE_CTX* store = OSSL_STORE_open_ex(uri.c_str(), libctx, propq, nullptr, nullptr, nullptr, nullptr, nullptr);
  if (!store) throw std::runtime_error("cannot open " + uri + ": " + ossl_errors());
  PkeyPtr key;
  while (!key && !OSSL_STORE_eof(store)) {
    OSSL_STORE_INFO* info = OSSL_STORE_load(store);
    if (!info) break;
    if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) key.reset(OSSL_STORE_INFO_get1_PKEY(info));
    OSSL_STORE_INFO_free(info);
  }
  OSSL_STORE_close(store);
  if (!key) throw std::runtime_error("no private key in " + uri + ": " + ossl_errors());
  return key;
}

bool digest_sign(OSSL_LIB_CTX* libctx, EVP_PKEY* key, Alg a, const char* propq, EVP_MD_CTX* md,
                 std::vector<unsigned char>& sig) {
  SignParams params(a, false);
  sig.resize(512);
  size_t len = sig.size();
  if (EVP_DigestSignInit_ex(md, nullptr, "SHA256", libctx, propq, key, params.p) != 1 ||
      EVP_DigestSign(md, sig.data(), &len, message(), message_size()) != 1)
    return false;
  sig.resize(len);
  return true;
}

bool pkey_sign(OSSL_LIB_CTX* libctx, EVP_PKEY* key, Alg a, const char* propq, std::vector<unsigned char>& sig) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(libctx, key, propq));
  SignParams params(a, true);
  sig.resize(512);
  size_t len = sig.size();
  if (!ctx || EVP_PKEY_sign_init_ex(ctx.get(), params.p) != 1 ||
      EVP_PKEY_sign(ctx.get(), sig.data(), &len, message_digest(), SHA256_DIGEST_LENGTH) != 1)
    return false;
  sig.resize(len);
  return true;
}

bool verify(EVP_PKEY* key, Alg a, const std::vector<unsigned char>& sig) {
  // Through the public key's DER, so the check runs in the default provider of the default libctx.
  unsigned char* der = nullptr;
  int der_len = i2d_PUBKEY(key, &der);
  if (der_len <= 0) return false;
  const unsigned char* p = der;
  PkeyPtr pub(d2i_PUBKEY(nullptr, &p, der_len));
  OPENSSL_free(der);
  MdCtxPtr md(EVP_MD_CTX_new());
  SignParams params(a, false);
  return pub && md &&
         EVP_DigestVerifyInit_ex(md.get(), nullptr, "SHA256", nullptr, "provider=default", pub.get(), params.p) == 1 &&
         EVP_DigestVerify(md.get(), sig.data(), sig.size(), message(), message_size()) == 1;
}

PkeyPtr read_public_key(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return nullptr;
  PkeyPtr key(PEM_read_PUBKEY(f, nullptr, nullptr, nullptr));
  std::fclose(f);
  return key;
}

pid_t spawn(const Command& c, const std::string& log) {
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) {
    std::string entry(*e);
    std::string key = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& o : c.env) replaced = replaced || o.substr(0, o.find('=')) == key;
    if (!replaced) env_store.push_back(entry);
  }
  for (const auto& o : c.env)
    if (o.find('=') != std::string::npos) env_store.push_back(o);  // bare names only remove
  std::vector<char*> envp, argv;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = c.argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return 127;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run(const Command& c, const std::string& log) {
  pid_t pid = spawn(c, log);
  return pid < 0 ? 127 : wait_for(pid);
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string ossl_errors() { return drain_openssl_errors("; "); }

Esys::Esys() {
  const std::string conf = counting_tcti();
  if (Tss2_TctiLdr_Initialize(conf.c_str(), &tcti_) != TSS2_RC_SUCCESS)
    throw std::runtime_error("cannot open the TCTI " + conf);
  if (Esys_Initialize(&ctx_, tcti_, nullptr) != TSS2_RC_SUCCESS) {
    Tss2_TctiLdr_Finalize(&tcti_);
    throw std::runtime_error("Esys_Initialize failed");
  }
}

Esys::~Esys() {
  if (ctx_) Esys_Finalize(&ctx_);
  if (tcti_) Tss2_TctiLdr_Finalize(&tcti_);
}

bool check_tpm_clean(const std::string& after) {
  // tss2-sys: it can flush session handles, which ESYS only knows by its own ESYS_TR objects.
  TSS2_TCTI_CONTEXT* tcti = nullptr;
  if (Tss2_TctiLdr_Initialize(options().tcti.c_str(), &tcti) != TSS2_RC_SUCCESS) {
    record_problem("after " + after + ": cannot connect to the TPM to check its handles");
    return false;
  }
  size_t size = Tss2_Sys_GetContextSize(0);
  std::vector<unsigned char> mem(size);
  auto* sys = reinterpret_cast<TSS2_SYS_CONTEXT*>(mem.data());
  TSS2_ABI_VERSION abi = TSS2_ABI_VERSION_CURRENT;
  bool clean = true;
  if (Tss2_Sys_Initialize(sys, size, tcti, &abi) != TSS2_RC_SUCCESS) {
    record_problem("after " + after + ": Tss2_Sys_Initialize failed");
    Tss2_TctiLdr_Finalize(&tcti);
    return false;
  }
  auto list = [&](TPM2_HANDLE first) {
    std::vector<TPM2_HANDLE> v;
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA cap{};
    if (Tss2_Sys_GetCapability(sys, nullptr, TPM2_CAP_HANDLES, first, TPM2_MAX_CAP_HANDLES, &more, &cap, nullptr) ==
        TSS2_RC_SUCCESS)
      for (uint32_t i = 0; i < cap.data.handles.count; ++i) v.push_back(cap.data.handles.handle[i]);
    return v;
  };
  std::vector<TPM2_HANDLE> leftovers = list(TPM2_TRANSIENT_FIRST);
  const std::vector<TPM2_HANDLE> loaded = list(TPM2_LOADED_SESSION_FIRST);
  leftovers.insert(leftovers.end(), loaded.begin(), loaded.end());
  for (TPM2_HANDLE h : list(TPM2_ACTIVE_SESSION_FIRST)) {  // saved sessions; loaded ones show here too
    bool is_loaded = false;
    for (TPM2_HANDLE l : loaded) is_loaded = is_loaded || (l & 0xFFFFFF) == (h & 0xFFFFFF);
    if (!is_loaded) leftovers.push_back(h);
  }
  if (!leftovers.empty()) {
    clean = false;
    std::string msg = "after " + after + ": the TPM still holds";
    for (TPM2_HANDLE h : leftovers) {
      char buf[16];
      std::snprintf(buf, sizeof buf, " 0x%08x", h);
      msg += buf;
      Tss2_Sys_FlushContext(sys, h);  // so the next benchmark starts clean
    }
    record_problem(msg + " (flushed)");
  }
  Tss2_Sys_Finalize(sys);
  Tss2_TctiLdr_Finalize(&tcti);
  return clean;
}

std::vector<std::string>& problems() {
  static std::vector<std::string> p;
  return p;
}

void record_problem(const std::string& p) {
  std::lock_guard lock(g_problems_mu);
  if (problems().size() < 50) problems().push_back(p);
}

int connect_unix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return -1;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

AgentProcess::AgentProcess(bool counted, const std::string& name) {
  const std::string base = options().workdir + "/" + (name.empty() ? (counted ? "agent-counted" : "agent") : name);
  socket_ = base + ".sock";
  log_ = base + ".log";
  unlink(socket_.c_str());
  Command c;
  c.argv = {options().tpmkey_program, "agent", "-D", "-a", socket_, "--tcti",
            counted ? counting_tcti() : options().tcti, "--keystore", options().keystore};
  for (const char* drop : {"TPMKEY_TCTI", "TPMKEY_KEYSTORE", "TPM2OPENSSL_TCTI", "TPMKEY_BENCH_COUNT_FILE",
                           "TPMKEY_BENCH_COUNT_MAP", "SSH_AUTH_SOCK"})
    c.env.push_back(drop);
  if (counted) {
    const std::string map = base + ".count";
    int fd = open(map.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, sizeof(uint64_t)) != 0) {
      if (fd >= 0) close(fd);
      throw std::runtime_error("cannot make the counter file " + map);
    }
    void* p = mmap(nullptr, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) throw std::runtime_error("cannot map the counter file " + map);  // nothing to undo yet
    counter_ = static_cast<uint64_t*>(p);
    c.env.push_back("TPMKEY_BENCH_COUNT_MAP=" + map);
  }
  // A constructor that throws runs no destructor: what it made is undone here.
  auto fail = [&](const std::string& why) {
    stop();
    unmap();
    throw std::runtime_error(why);
  };
  pid_ = spawn(c, log_);
  if (pid_ < 0) fail("cannot start " + options().tpmkey_program + " agent");
  // Ready once the socket accepts a connection (bounded: it starts in about 10 ms).
  for (int i = 0; i < 2000; ++i) {
    if (int fd = connect_unix(socket_); fd >= 0) {
      close(fd);
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      fail("tpmkey agent exited at start: " + read_all(log_));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  fail("tpmkey agent did not listen within 10 s: " + read_all(log_));
}

AgentProcess::~AgentProcess() {
  stop();
  unmap();
}

void AgentProcess::stop() {
  if (pid_ < 0) return;
  const pid_t pid = pid_;
  pid_ = -1;
  kill(pid, SIGTERM);
  int status = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(5)) {
      record_problem("tpmkey agent did not stop within 5 s of SIGTERM (killed): " + read_all(log_));
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    record_problem("tpmkey agent ended with status " + std::to_string(status) + ": " + read_all(log_));
}

void AgentProcess::unmap() {
  if (counter_) munmap(counter_, sizeof(uint64_t));
  counter_ = nullptr;
}

Interleaved interleave(benchmark::State& state, int kinds, const std::function<std::string(int)>& one,
                       const std::function<void(const std::vector<double>&)>& each) {
  Interleaved r;
  std::vector<double> total(size_t(kinds), 0.0), ms(size_t(kinds), 0.0);
  for (auto _ : state) {
    double iteration_ms = 0;
    for (int j = 0; j < kinds; ++j) {
      const int i = int((r.iterations + j) % kinds);
      const auto t0 = std::chrono::steady_clock::now();
      const std::string why = one(i);
      ms[size_t(i)] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (!why.empty()) {
        record_problem(why);
        state.SkipWithError(why.c_str());
        r.failed = true;
        break;
      }
      iteration_ms += ms[size_t(i)];
    }
    if (r.failed) break;
    for (int i = 0; i < kinds; ++i) total[size_t(i)] += ms[size_t(i)];
    ++r.iterations;
    if (each) each(ms);
    state.SetIterationTime(iteration_ms / 1000.0);
  }
  r.mean_ms.resize(size_t(kinds), 0.0);
  for (int i = 0; i < kinds; ++i) r.mean_ms[size_t(i)] = r.iterations ? total[size_t(i)] / double(r.iterations) : 0;
  return r;
}

}  // namespace tpmkey::bench
