// Test support: a private swtpm per test binary, the TPM handle check, the dictionary-attack
// settings, and a TPM that never answers.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

}  // namespace tpmkey::test
