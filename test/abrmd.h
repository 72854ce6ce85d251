// Test support: tpm2-abrmd, the user-space TPM resource manager, on a private D-Bus.
#pragma once

#include <sys/types.h>

#include <string>

namespace tpmkey::test {

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

}  // namespace tpmkey::test
