// Fuzz target: the SSH wire reader (keystore/ssh_wire.h). The input is its own program: its first
// bytes pick the reads in turn, and the rest of the input is what is read. No read may reach past the
// buffer or consume bytes it says were not there; what is read writes back with SshWriter.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "keystore/ssh_wire.h"
#include "test/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tpmkey;
  if (size == 0) return 0;
  const uint8_t* const end = data + size;
  // data[0] % 16 program bytes follow it, one read each in turn; the rest is the buffer.
  const size_t program_size = std::min<size_t>(data[0] % 16, size - 1);
  const uint8_t* const program = data + 1;
  SshReader r(program + program_size, size - 1 - program_size);
  auto inside = [&](const SshView& v) { return v.size == 0 || (v.data >= data && v.data + v.size <= end); };
  for (int step = 0; !r.done() && step < 256; ++step) {
    const size_t before = r.left();
    bool ok = false;
    switch ((program_size ? program[step % program_size] : step) % 5) {
      case 0: {
        uint8_t v;
        ok = r.u8(&v);
        break;
      }
      case 1: {
        uint32_t v;
        ok = r.u32(&v);
        break;
      }
      case 2: {
        bool v;
        ok = r.boolean(&v);
        break;
      }
      case 3: {
        SshView v;
        ok = r.string(&v);
        if (ok) {
          TPMKEY_FUZZ_CHECK(inside(v));
          SshWriter w;
          w.string(v.data, v.size);
          TPMKEY_FUZZ_CHECK(w.bytes().size() == v.size + 4);
          SshReader back(w.bytes().data(), w.bytes().size());
          SshView v2;
          TPMKEY_FUZZ_CHECK(back.string(&v2) && back.done() && v2.bytes() == v.bytes());
        }
        break;
      }
      default: {
        SshView v;
        ok = r.mpint(&v);
        if (ok) {
          TPMKEY_FUZZ_CHECK(inside(v));
          TPMKEY_FUZZ_CHECK(v.size == 0 || v.data[0] != 0);  // magnitude without leading zeros
          SshWriter w;
          w.mpint(v.data, v.size);
          SshReader back(w.bytes().data(), w.bytes().size());
          SshView v2;
          TPMKEY_FUZZ_CHECK(back.mpint(&v2) && back.done() && v2.bytes() == v.bytes());
        }
        break;
      }
    }
    TPMKEY_FUZZ_CHECK(r.left() <= before);
    if (!ok) break;
    TPMKEY_FUZZ_CHECK(r.left() < before);
  }
  // The helpers over whole inputs.
  const std::string b64 = base64(data, size);
  TPMKEY_FUZZ_CHECK(b64.size() == (size + 2) / 3 * 4);
  TPMKEY_FUZZ_CHECK(ssh_fingerprint(Bytes(data, end)).rfind("SHA256:", 0) == 0);
  return 0;
}
