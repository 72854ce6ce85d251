// What the agent fuzz targets share: the environment that keeps every TPM path short (a TCTI
// that refuses at once, a 0.2 s timeout), a private keystore, and quiet agent logging. Set
// before the first Agent or key is made, so no fuzz input can reach or wait for a real TPM.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

#include "test/fuzz/fuzz_support.h"
#include "tools/agent/log.h"

namespace tpmkey::fuzz {

// The empty keystore directory the agent serves, made once; also the provider's keystore, so a
// tpm2:NAME in a message never reads the keystore of the user running the fuzzer.
inline const std::string& agent_keystore() {
  static const std::string dir = [] {
    const std::string d = scratch_dir() + "/agent-keystore";
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline void agent_environment() {
  static const bool done = [] {
    setenv("TPMKEY_KEYSTORE", agent_keystore().c_str(), 1);
    // Port 1 on loopback: nothing listens, so a connection is refused at once.
    setenv("TPMKEY_TCTI", "swtpm:host=127.0.0.1,port=1", 1);
    setenv("TPMKEY_TIMEOUT", "0.2", 1);
    // Never the agent of the user running the fuzzer.
    setenv("TPMKEY_AGENT", "off", 1);
    // A confirmation (ssh-add -c keys) is always denied, without a window or a wait.
    setenv("SSH_ASKPASS", "/bin/false", 1);
    agent::set_log(agent::LogSink{false, agent::LogLevel::kError});
    return true;
  }();
  (void)done;
}

}  // namespace tpmkey::fuzz
