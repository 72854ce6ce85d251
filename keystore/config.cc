#include "keystore/config.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>

namespace tpmkey {
namespace {

const char* first_set(const char* a, const char* env_name) {
  if (a && *a) return a;
  const char* e = std::getenv(env_name);
  return e && *e ? e : nullptr;
}

std::string default_keystore() {
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg == '/') return std::string(xdg) + "/tpmkey";
  const char* home = std::getenv("HOME");
  if (!home || !*home) {
    if (const passwd* pw = getpwuid(getuid())) home = pw->pw_dir;
  }
  return std::string(home ? home : "") + "/.local/share/tpmkey";
}

}  // namespace

Settings resolve_settings(const char* tcti, const char* keystore, const char* authorization) {
  Settings s;
  if (const char* t = first_set(tcti, kEnvTcti)) s.tcti = t;
  if (const char* k = first_set(keystore, kEnvKeystore)) s.keystore = k;
  else s.keystore = default_keystore();
  if (const char* a = first_set(authorization, kEnvAuthorization)) s.authorization = a;
  return s;
}

}  // namespace tpmkey
