// Test support: a private swtpm per test binary, TPM cleanliness checks, temp dirs, commands.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include <openssl/types.h>

namespace tpmkey::test {

// A swtpm process on free loopback ports with a fresh state directory.
class Swtpm {
 public:
  Swtpm();   // starts it and waits until it accepts connections
  ~Swtpm();  // kills it and removes its state
  std::string tcti() const;  // "swtpm:host=127.0.0.1,port=N"
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  pid_t owner_ = -1;  // only the process that started swtpm stops it (not forked children)
  int port_ = 0;
  std::string dir_;
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

std::string make_temp_dir(const std::string& prefix);
void remove_tree(const std::string& dir);
void write_file(const std::string& path, const std::string& data);
std::string read_file(const std::string& path);

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};
// Runs `argv` (no shell) with extra environment entries "K=V", optional stdin text.
CommandResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                  const std::string& stdin_text = "");

// Paths from the build: the provider module directory, the tpmkey CLI.
std::string provider_dir();
std::string tpmkey_bin();

// An openssl.cnf that activates tpmkey and default in the given order with these settings.
std::string write_openssl_cnf(const std::string& dir, bool tpmkey_first, const std::string& tcti,
                              const std::string& keystore);

// A library context configured by write_openssl_cnf (tpmkey and default activated).
OSSL_LIB_CTX* new_configured_libctx(const std::string& cnf);
// TPM commands the libctx's tpmkey provider has sent.
uint64_t tpm_commands(OSSL_LIB_CTX* libctx);
// All OpenSSL errors on the queue as text (and clears it).
std::string drain_errors();

}  // namespace tpmkey::test
