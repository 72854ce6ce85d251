// Shared pieces of the tpmkey benchmarks: options, the three signature algorithms, OpenSSL library
// contexts for tpmkey and tpm2-openssl, signing through EVP, TPM command counting, child processes
// and the check that every benchmark leaves the TPM without transient objects or sessions.
//
// swtpm serves one TCP connection at a time: every benchmark opens its TPM connection (a raw ESYS
// context or a library context whose provider connects) and closes it before it returns.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/store.h>
#include <tss2/tss2_esys.h>

#include "keystore/ossl.h"

namespace tpmkey::bench {

// The core's unique_ptr aliases (keystore/ossl.h), under the names the benchmarks use.
using tpmkey::LibCtxPtr;
using PkeyPtr = tpmkey::EvpPkeyPtr;
using PkeyCtxPtr = tpmkey::EvpPkeyCtxPtr;
using MdCtxPtr = tpmkey::EvpMdCtxPtr;

struct Options {
  std::string tcti;          // the swtpm, e.g. swtpm:host=127.0.0.1,port=N
  std::string workdir;       // keys made by bench/run.sh, scratch files
  std::string keystore;      // tpmkey keystore (holds bench-ec.pem, bench-rsa.pem)
  std::string provider_dir;  // directory of tpmkey.so
  std::string counting_tcti_module;  // libtpmkey-bench-tcti.so
  std::string tss_floor;             // the tpmkey_tss_floor program
  std::string tpmkey_program;        // the tpmkey CLI, whose `tpmkey agent` the agent rows run
  int sshd_port = 0;         // the private sshd run.sh started (0: no login rows); see agent_bench.cc
  double min_time = 0.3;     // seconds per repetition of an in-process benchmark
  int cold_iterations = 15;  // per repetition
  int process_iterations = 20;
  int login_iterations = 10;
  int repetitions = 5;       // the summary reports the median
};
const Options& options();
void set_options(const Options& o);

enum class Alg { kEcdsaP256, kRsaPkcs1, kRsaPss };
constexpr Alg kAllAlgs[] = {Alg::kEcdsaP256, Alg::kRsaPkcs1, Alg::kRsaPss};
const char* alg_name(Alg a);        // "ecdsa-p256", "rsa2048-pkcs1", "rsa2048-pss"
const char* alg_label(Alg a);       // "ECDSA P-256", ...
bool is_rsa(Alg a);

// The message every benchmark signs (64 bytes) and its SHA-256.
const unsigned char* message();
size_t message_size();
const unsigned char* message_digest();  // 32 bytes

// Decryption and key agreement (decrypt_bench.cc, raw_esys.cc): RSA-2048 decryption of one
// ciphertext (PKCS#1 v1.5 or OAEP with SHA-256) and ECDH P-256 with a software peer key.
enum class Dec { kRsaPkcs1, kRsaOaep, kEcdh };
constexpr Dec kAllDecs[] = {Dec::kRsaPkcs1, Dec::kRsaOaep, Dec::kEcdh};
const char* dec_name(Dec d);   // "rsa2048-decrypt-pkcs1", "rsa2048-decrypt-oaep", "ecdh-p256"
const char* dec_label(Dec d);  // "RSA-2048 decrypt PKCS#1 v1.5", ...
// The 32-byte message every decryption row decrypts.
const std::vector<unsigned char>& plaintext();
// The plaintext encrypted in software (default provider) to `pub` with d's padding; empty on error.
std::vector<unsigned char> encrypt_to(EVP_PKEY* pub, Dec d);
// The ECDH peer: the software EC key (soft-ec.pem, private) and its public half alone.
PkeyPtr ecdh_peer_private();
PkeyPtr ecdh_peer_public();
// The shared secret (x coordinate) of `priv` and `peer`, computed in software (default provider).
std::vector<unsigned char> software_ecdh(EVP_PKEY* priv, EVP_PKEY* peer);
// A public-only copy of `key` in the default provider of the default libctx (through its DER).
PkeyPtr public_copy(EVP_PKEY* key);

// Key locations made by run.sh.
std::string tpmkey_uri(Alg a);             // tpm2:bench-ec / tpm2:bench-rsa
std::string tpm2_openssl_key_file(Alg a);  // workdir/tpm2-openssl-{ec,rsa}.pem
std::string software_key_file(Alg a);      // workdir/soft-{ec,rsa}.pem
// The TPM keys with the decrypt usage: tpm2:bench-rsa-dec (RSA-2048), tpm2:bench-ecdh (EC P-256).
std::string tpmkey_dec_uri(Dec d);

// "<module>:<tcti>": the swtpm through the counting TCTI module.
std::string counting_tcti();
// TPM commands sent through the counting module in this process so far.
uint64_t counted_commands();

// Property query for tpm2-openssl, as its documentation recommends: use the TPM for everything
// it offers except hashing (it also registers SHA-2 digests that hash inside the TPM).
inline constexpr const char* kTpm2OpensslPropq = "?provider=tpm2,tpm2.digest!=yes";

// A library context with default + tpmkey (from an openssl.cnf written to the workdir); with
// `counting`, tpmkey reaches the TPM through the counting TCTI module.
LibCtxPtr tpmkey_libctx(bool counting = false);
// A library context with default + tpm2 (tpm2-openssl, which connects to the TPM right away).
LibCtxPtr tpm2_openssl_libctx();
// TPM commands sent so far by the libctx's tpmkey provider (the tpmkey-tpm-commands param).
uint64_t tpmkey_commands(OSSL_LIB_CTX* libctx);

// The first private key at `uri` (tpm2:NAME or a file path) through OSSL_STORE.
PkeyPtr load_private_key(OSSL_LIB_CTX* libctx, const std::string& uri, const char* propq);

// One EVP_DigestSign of message() (init + sign on `md`, which is reused). `sig` receives it.
bool digest_sign(OSSL_LIB_CTX* libctx, EVP_PKEY* key, Alg a, const char* propq, EVP_MD_CTX* md,
                 std::vector<unsigned char>& sig);
// One EVP_PKEY_sign of message_digest() (init + sign on a new EVP_PKEY_CTX).
bool pkey_sign(OSSL_LIB_CTX* libctx, EVP_PKEY* key, Alg a, const char* propq, std::vector<unsigned char>& sig);
// Verifies `sig` over message() with the key's public half, in software (default provider).
bool verify(EVP_PKEY* key, Alg a, const std::vector<unsigned char>& sig);

// A public key from a PEM file (SubjectPublicKeyInfo), or nullptr.
PkeyPtr read_public_key(const std::string& path);

// A child process: argv[0] is looked up in PATH; `env` entries "K=V" replace or add to this
// process's environment, a bare "K" removes it.
struct Command {
  std::vector<std::string> argv;
  std::vector<std::string> env;
};
// Starts it with stdin from /dev/null and stdout/stderr to `log`; -1 if it could not start.
pid_t spawn(const Command& c, const std::string& log);
// Waits for it; the exit status (128 + signal if it died of one).
int wait_for(pid_t pid);
// spawn and wait_for; 127 if it could not start.
int run(const Command& c, const std::string& log);
// A whole file ("" if it cannot be read).
std::string read_all(const std::string& path);
// The median (0 for none).
double median(std::vector<double> v);

// One `tpmkey agent -D` process on a socket in the workdir (`name`.sock, its log `name`.log),
// serving the keystore, for the lifetime of the object. `counted`: its TCTI is the counting
// module, counting into a file mapped here too (commands()).
class AgentProcess {
 public:
  explicit AgentProcess(bool counted, const std::string& name = "");
  ~AgentProcess();
  AgentProcess(const AgentProcess&) = delete;
  AgentProcess& operator=(const AgentProcess&) = delete;

  const std::string& socket() const { return socket_; }
  // TPM commands the counted agent has sent so far.
  uint64_t commands() const { return counter_ ? __atomic_load_n(counter_, __ATOMIC_ACQUIRE) : 0; }
  // SIGTERM and wait: the agent gives its key and session back to the TPM as it exits, before the
  // next benchmark's TPM clean check. A stop that takes long or fails is a problem.
  void stop();

 private:
  void unmap();
  pid_t pid_ = -1;
  std::string socket_, log_;
  uint64_t* counter_ = nullptr;
};

// A connected unix stream socket, or -1.
int connect_unix(const std::string& path);

// The OpenSSL error queue as text (and clears it).
std::string ossl_errors();

// A raw ESYS connection (through the counting TCTI). Finalized by the destructor.
class Esys {
 public:
  Esys();  // throws std::runtime_error if the TPM is unreachable
  ~Esys();
  Esys(const Esys&) = delete;
  Esys& operator=(const Esys&) = delete;
  ESYS_CONTEXT* get() const { return ctx_; }

 private:
  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* ctx_ = nullptr;
};

// Connects (no other connection may be open), lists transient objects, loaded and saved
// sessions. If there are any, records a problem naming `after` and flushes them so the next
// benchmark starts clean. Returns whether the TPM was clean.
bool check_tpm_clean(const std::string& after);
// Every problem recorded so far (leaked handles, failed signatures, setup errors).
std::vector<std::string>& problems();
void record_problem(const std::string& p);

}  // namespace tpmkey::bench
