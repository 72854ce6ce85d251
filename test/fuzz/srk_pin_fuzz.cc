// Fuzz target: the SRK pin file, srk.pin (Keystore::read_pin in keystore/keystore.cc). The parser
// is only reachable through the file, so each input is written as srk.pin in a private keystore
// directory. A pin that reads must write (Keystore::write_pin) and read back the same.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "keystore/keystore.h"
#include "test/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tpmkey;
  static const std::string in_dir = fuzz::scratch_dir() + "/srk-in", out_dir = fuzz::scratch_dir() + "/srk-out";
  static const bool made = std::filesystem::create_directories(in_dir) && std::filesystem::create_directories(out_dir);
  (void)made;
  const Keystore in(in_dir), out(out_dir);
  fuzz::write_input(in.pin_path(), data, size);
  auto pin = in.read_pin();
  if (!pin) {
    // Never echoes the file: the message is about the file, not its contents.
    TPMKEY_FUZZ_CHECK(!pin.error().text().empty());
    return 0;
  }
  TPMKEY_FUZZ_CHECK(pin->has_value());  // the file exists, so "no pin yet" is not an answer
  const SrkPin& p = **pin;
  TPMKEY_FUZZ_CHECK(p.handle == 0 || (p.handle >> 24) == 0x81);
  TPMKEY_FUZZ_CHECK(out.write_pin(p, /*replace=*/true).ok());
  auto back = out.read_pin();
  TPMKEY_FUZZ_CHECK(back.ok() && back->has_value());
  TPMKEY_FUZZ_CHECK((*back)->name == p.name && (*back)->handle == p.handle);
  return 0;
}
