// Where tpmkey finds its TPM and its keystore, and how long it waits for it: the one place
// configuration is resolved (docs/configuration.md).
#pragma once

#include <chrono>
#include <string>

#include "keystore/error.h"

namespace tpmkey {

inline constexpr const char* kEnvTcti = "TPMKEY_TCTI";
inline constexpr const char* kEnvKeystore = "TPMKEY_KEYSTORE";
inline constexpr const char* kEnvAuthorization = "TPMKEY_AUTHORIZATION";
inline constexpr const char* kEnvTimeout = "TPMKEY_TIMEOUT";
inline constexpr const char* kEnvKeygenTimeout = "TPMKEY_KEYGEN_TIMEOUT";
inline constexpr const char* kEnvBusyTimeout = "TPMKEY_BUSY_TIMEOUT";
inline constexpr const char* kEnvAgent = "TPMKEY_AGENT";
inline constexpr const char* kEnvAgentRequired = "TPMKEY_AGENT_REQUIRED";

using Millis = std::chrono::milliseconds;

// How long tpmkey waits (docs/sessions.md, "Long-lived processes").
struct Timeouts {
  // For the TPM's answer to one command (and for connecting to it).
  Millis command{30'000};
  // For commands that generate keys (TPM2_Create, TPM2_CreatePrimary): an RSA key can take a
  // real TPM a minute or more.
  Millis keygen{300'000};
  // For a free object or session slot when other programs hold them all (waiting with backoff).
  Millis busy{5'000};
};

struct Settings {
  std::string tcti;      // a tpm2-tss TCTI string; empty = the tctildr default
  std::string keystore;  // a directory
  // How commands are authorized: "session" (salted, encrypted HMAC session; the default) or
  // "password" (the cleartext TPM_RS_PW opt-out). docs/sessions.md.
  std::string authorization = "session";
  Timeouts timeouts;
  // Whether keys are signed through a running tpmkey agent (keystore/broker.h): "auto" (the
  // agent's default socket), "off", or the absolute path of an agent's socket.
  std::string agent = "auto";
  // Whether a signature the agent does not make is an error instead of one made here: set, a
  // process never signs with the TPM itself (decryption and key agreement still do).
  bool agent_required = false;
};

// The values given explicitly (openssl.cnf keys, or the CLI's options); nullptr or "" means
// "not given".
struct SettingsInput {
  const char* tcti = nullptr;
  const char* keystore = nullptr;
  const char* authorization = nullptr;
  const char* timeout = nullptr;         // seconds, for example "30" or "0.5"
  const char* keygen_timeout = nullptr;  // seconds
  const char* busy_timeout = nullptr;    // seconds
  const char* agent = nullptr;           // "auto", "off" or a socket path
  const char* agent_required = nullptr;  // "yes" or "no"
};

// Explicit values win, then the TPMKEY_* environment variables, then the defaults (the tctildr
// default TPM, $XDG_DATA_HOME/tpmkey or ~/.local/share/tpmkey, "session", Timeouts{}, "auto",
// agent-required "no").
// A timeout that is not a positive number of seconds is an error that names the setting.
Result<Settings> resolve_settings(const SettingsInput& in);

}  // namespace tpmkey
