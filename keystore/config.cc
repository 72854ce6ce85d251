#include "keystore/config.h"

#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace tpmkey {
namespace {

// secure_getenv: in a setuid or otherwise privileged program the environment is the caller's,
// and TPMKEY_TCTI names a library to load, TPMKEY_AUTHORIZATION can ask for cleartext passwords.
const char* env(const char* name) { return secure_getenv(name); }

const char* first_set(const char* a, const char* env_name) {
  if (a && *a) return a;
  const char* e = env(env_name);
  return e && *e ? e : nullptr;
}

std::string default_keystore() {
  if (const char* xdg = env("XDG_DATA_HOME"); xdg && *xdg == '/') return std::string(xdg) + "/tpmkey";
  const char* home = env("HOME");
  if (!home || !*home) {
    if (const passwd* pw = getpwuid(getuid())) home = pw->pw_dir;
  }
  return std::string(home ? home : "") + "/.local/share/tpmkey";
}

// "30", "0.5", "1e1": seconds, more than 0 and at most a day.
Status parse_seconds(const char* text, const char* name, const char* env_name, Millis* out) {
  if (!text) return Status::Ok();
  char* end = nullptr;
  errno = 0;
  const double s = std::strtod(text, &end);
  if (errno || end == text || *end != '\0' || !std::isfinite(s) || s <= 0 || s > 86400)
    return make_error(Reason::kInvalidArgument, std::string(name) + " (or " + env_name + ") must be a number of seconds "
                                                    "between 0 and 86400, not \"" + std::string(text).substr(0, 32) + "\"");
  // Rounded to the nearest millisecond by hand: std::llround is the one libm function tpmkey
  // would call, and libm is a library more for every process that loads the provider
  // (docs/performance.md, "The idle provider").
  *out = Millis(std::max<long long>(1, static_cast<long long>(s * 1000 + 0.5)));
  return Status::Ok();
}

}  // namespace

Result<Settings> resolve_settings(const SettingsInput& in) {
  Settings s;
  if (const char* t = first_set(in.tcti, kEnvTcti)) s.tcti = t;
  if (const char* k = first_set(in.keystore, kEnvKeystore)) s.keystore = k;
  else s.keystore = default_keystore();
  if (const char* a = first_set(in.authorization, kEnvAuthorization)) s.authorization = a;
  if (s.authorization != "session" && s.authorization != "password")
    return make_error(Reason::kInvalidArgument,
                      "authorization must be \"session\" or \"password\", not \"" + s.authorization.substr(0, 32) + "\"");
  TPMKEY_TRY(parse_seconds(first_set(in.timeout, kEnvTimeout), "timeout", kEnvTimeout, &s.timeouts.command));
  TPMKEY_TRY(parse_seconds(first_set(in.keygen_timeout, kEnvKeygenTimeout), "keygen-timeout", kEnvKeygenTimeout,
                           &s.timeouts.keygen));
  TPMKEY_TRY(parse_seconds(first_set(in.busy_timeout, kEnvBusyTimeout), "busy-timeout", kEnvBusyTimeout,
                           &s.timeouts.busy));
  if (const char* a = first_set(in.agent, kEnvAgent)) s.agent = a;
  if (s.agent != "auto" && s.agent != "off" && s.agent[0] != '/')
    return make_error(Reason::kInvalidArgument, "agent (or " + std::string(kEnvAgent) +
                                                    ") must be \"auto\", \"off\" or the absolute path of a tpmkey "
                                                    "agent's socket, not \"" + s.agent.substr(0, 32) + "\"");
  if (const char* r = first_set(in.agent_required, kEnvAgentRequired)) {
    const std::string v = r;
    if (v != "yes" && v != "no")
      return make_error(Reason::kInvalidArgument, "agent-required (or " + std::string(kEnvAgentRequired) +
                                                      ") must be \"yes\" or \"no\", not \"" + v.substr(0, 32) + "\"");
    s.agent_required = v == "yes";
  }
  if (s.agent_required && s.agent == "off")
    return make_error(Reason::kInvalidArgument, "agent-required = yes needs an agent: agent (or " +
                                                    std::string(kEnvAgent) + ") is \"off\"");
  return s;
}

}  // namespace tpmkey
