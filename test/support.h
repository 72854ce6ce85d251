// Test support: a private swtpm per test binary, TPM cleanliness checks, temp dirs, commands.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/types.h>

// A command's result: it succeeded, or it failed cleanly (no crash) saying `text` on stderr.
#define EXPECT_OK(r) EXPECT_EQ((r).exit_code, 0) << (r).out << (r).err
#define ASSERT_OK(r) ASSERT_EQ((r).exit_code, 0) << (r).out << (r).err
#define EXPECT_FAILS_WITH(r, text)                                               \
  do {                                                                           \
    auto&& res_ = (r);                                                           \
    EXPECT_NE(res_.exit_code, 0) << res_.out;                                    \
    EXPECT_LT(res_.exit_code, 128) << "crashed: " << res_.err;                   \
    EXPECT_NE(res_.err.find(text), std::string::npos) << "stderr: " << res_.err; \
  } while (0)

namespace tpmkey::test {

// A swtpm process on free loopback ports with a fresh state directory.
class Swtpm {
 public:
  Swtpm();   // starts it and waits until it accepts connections
  ~Swtpm();  // kills it and removes its state
  std::string tcti() const;  // "swtpm:host=127.0.0.1,port=N"
  int port() const { return port_; }
  const std::string& state_dir() const { return dir_; }
  // Kills and starts it again on the same ports and state: a TPM restart (transient objects and
  // sessions are gone, the seeds and persistent objects stay). Open connections break.
  void restart();
  // Kills it with SIGKILL (no orderly shutdown) and leaves it down until start().
  void kill_hard();
  void start();
  // SIGSTOP / SIGCONT: a TPM that accepts connections (the kernel does) but does not answer.
  void pause();
  void resume();
  // A different TPM on the same ports: a fresh state directory, so new seeds and a new SRK.
  void replace();

 private:
  void stop();
  pid_t pid_ = -1;
  pid_t owner_ = -1;  // only the process that started swtpm stops it (not forked children)
  int port_ = 0;
  std::string dir_;
};

// A man in the middle on the TPM bus: listens on a free loopback port pair and forwards to a swtpm
// (data and control channels), recording every command sent to the TPM. It can also corrupt the
// response to a command, as an interposer on a real bus could.
class BusProxy {
 public:
  explicit BusProxy(int swtpm_port);
  ~BusProxy();
  BusProxy(const BusProxy&) = delete;
  BusProxy& operator=(const BusProxy&) = delete;
  std::string tcti() const;
  // Every command byte the TPM was sent so far, and whether `needle` is among them.
  std::string sent() const;
  bool saw(const std::string& needle) const { return sent().find(needle) != std::string::npos; }
  // The command codes of those commands, in order.
  std::vector<uint32_t> command_codes() const;
  void clear();
  // Flips one byte in the parameters of the next response to a command with this code.
  void corrupt_next_response(uint32_t command_code);
  int corrupted() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// tpm2-abrmd (the user-space TPM resource manager) in front of `backend_tcti`, on a private D-Bus
// session bus, for the lifetime of the object. Sets DBUS_SESSION_BUS_ADDRESS in this process,
// where the tabrmd TCTI looks for the bus.
class Abrmd {
 public:
  explicit Abrmd(const std::string& backend_tcti);
  ~Abrmd();
  Abrmd(const Abrmd&) = delete;
  Abrmd& operator=(const Abrmd&) = delete;
  std::string tcti() const;  // "tabrmd:bus_type=session,bus_name=..."

 private:
  pid_t dbus_ = -1, abrmd_ = -1;
  std::string dir_, name_;
};

// The swtpm shared by the tests of this binary (started on first use).
Swtpm& shared_swtpm();

struct TpmHandles {
  std::vector<uint32_t> transient, loaded_sessions, saved_sessions;
  bool clean() const { return transient.empty() && loaded_sessions.empty() && saved_sessions.empty(); }
  std::string describe() const;
};
// Connects separately and lists the handles left in the TPM.
TpmHandles tpm_handles(const std::string& tcti);
// The TPM's dictionary-attack failure counter (TPM2_PT_LOCKOUT_COUNTER), and its parameters
// (TPM2_DictionaryAttackParameters; each test binary's swtpm starts with 1000 tries and 1 s).
uint32_t lockout_counter(const std::string& tcti);
void set_dictionary_attack(const std::string& tcti, uint32_t max_tries, uint32_t recovery_s);

// A TPM that never answers: a loopback listener that accepts connections and reads commands but
// sends nothing back, for as long as the object lives.
class SilentTpm {
 public:
  SilentTpm();
  ~SilentTpm();
  SilentTpm(const SilentTpm&) = delete;
  SilentTpm& operator=(const SilentTpm&) = delete;
  std::string tcti() const;  // "swtpm:host=127.0.0.1,port=N"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string make_temp_dir(const std::string& prefix);
void remove_tree(const std::string& dir);
void write_file(const std::string& path, const std::string& data);
std::string read_file(const std::string& path);

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
  bool timed_out = false;
};
// Runs `argv` (no shell) with extra environment entries "K=V", optional stdin text. A command
// still running after `timeout_s` seconds is killed (exit code 128 + SIGKILL) and `timed_out` set.
CommandResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                  const std::string& stdin_text = "", int timeout_s = 120);

// Paths from the build: the provider module directory, the tpmkey CLI.
std::string provider_dir();
std::string tpmkey_bin();

// An openssl.cnf that activates tpmkey and default in the given order with these settings.
// `extra` lines go into tpmkey's section (for example "authorization = password").
std::string write_openssl_cnf(const std::string& dir, bool tpmkey_first, const std::string& tcti,
                              const std::string& keystore, const std::string& extra = "");

// A library context configured by write_openssl_cnf (tpmkey and default activated).
OSSL_LIB_CTX* new_configured_libctx(const std::string& cnf);
// TPM commands the libctx's tpmkey provider has sent.
uint64_t tpm_commands(OSSL_LIB_CTX* libctx);
using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

// Verification happens here: a library context holding the default provider and nothing else.
OSSL_LIB_CTX* default_only();
// The key's public half, re-read from SubjectPublicKeyInfo into the default-only context.
PkeyPtr public_copy(EVP_PKEY* pkey);

struct SignOpts {
  const char* md = "SHA256";
  int padding = 0;  // RSA: RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING
};
// EVP_DigestSign in `lib` (empty on failure); EVP_DigestVerify in default_only().
std::vector<unsigned char> digest_sign(OSSL_LIB_CTX* lib, EVP_PKEY* key, const std::string& msg, SignOpts o);
bool digest_verify(EVP_PKEY* pub, const std::string& msg, const std::vector<unsigned char>& sig, SignOpts o);

// The digest of `msg` (md: "SHA256", ...) computed by the default provider.
std::vector<unsigned char> sha(const char* md, const std::string& msg);

// Generates a key in the TPM through EVP_PKEY_generate (group for EC, bits for RSA).
PkeyPtr generate_key(OSSL_LIB_CTX* lib, const char* type, const char* group, size_t bits,
                     const char* user_auth = nullptr);
// Writes the key's TSS2 PEM (through the tpmkey encoder) to `path`.
bool store_key(EVP_PKEY* key, const std::string& path);
// The first private (or, with `expect`, public) key OSSL_STORE finds at `uri`.
PkeyPtr load_key(OSSL_LIB_CTX* lib, const std::string& uri, int expect = 0);

// All OpenSSL errors on the queue as text (and clears it).
std::string drain_errors();

}  // namespace tpmkey::test
