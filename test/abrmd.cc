#include "test/abrmd.h"

#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <thread>

#include <tss2/tss2_tctildr.h>

#include "test/process.h"

namespace tpmkey::test {

Abrmd::Abrmd(const std::string& backend_tcti) {
  dir_ = make_temp_dir("tpmkey-abrmd");
  name_ = "com.intel.tss2.Tabrmd.tpmkey" + std::to_string(getpid()) + "x" + std::to_string(std::random_device{}() % 100000);
  dbus_ = spawn({"dbus-daemon", "--session", "--nofork", "--nopidfile", "--nosyslog", "--address=unix:path=" + dir_ + "/bus",
                 "--print-address=3"},
                dir_ + "/dbus.log", 3, dir_ + "/addr");
  std::string addr;
  for (int i = 0; i < 200 && addr.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    addr = read_file(dir_ + "/addr");
  }
  if (addr.empty()) throw std::runtime_error("dbus-daemon did not start (is dbus-daemon installed?)");
  addr = addr.substr(0, addr.find('\n'));
  setenv("DBUS_SESSION_BUS_ADDRESS", addr.c_str(), 1);
  abrmd_ = spawn({"tpm2-abrmd", "--session", "--dbus-name=" + name_, "--tcti=" + backend_tcti, "--allow-root"},
                 dir_ + "/abrmd.log");
  // Ready once a client can connect (abrmd claims its bus name after probing the TPM).
  for (int i = 0; i < 200; ++i) {
    TSS2_TCTI_CONTEXT* t = nullptr;
    if (Tss2_TctiLdr_Initialize(tcti().c_str(), &t) == TSS2_RC_SUCCESS) {
      Tss2_TctiLdr_Finalize(&t);
      return;
    }
    int status;
    if (waitpid(abrmd_, &status, WNOHANG) == abrmd_) {
      abrmd_ = -1;
      throw std::runtime_error("tpm2-abrmd exited at start: " + read_file(dir_ + "/abrmd.log"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("tpm2-abrmd did not become ready");
}

Abrmd::~Abrmd() {
  stop_child(abrmd_);  // flushes what its clients left, while the bus is still up
  stop_child(dbus_);
  unsetenv("DBUS_SESSION_BUS_ADDRESS");
  remove_tree(dir_);
}

std::string Abrmd::tcti() const { return "tabrmd:bus_type=session,bus_name=" + name_; }

}  // namespace tpmkey::test
