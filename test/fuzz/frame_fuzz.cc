// Fuzz target: the agent's framing (FrameReader, tools/agent/server.h). The input is a client's
// byte stream, fed in chunks whose sizes come from a generator seeded by the input: the messages
// handed out and the point where the stream breaks must not depend on how the bytes arrived (the
// same stream fed at once is the reference), and every message must frame() back to its bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "test/fuzz/fuzz_support.h"
#include "tools/agent/server.h"

namespace {

using namespace tpmkey;

struct Outcome {
  std::vector<Bytes> messages;
  bool broken = false;
  size_t buffered = 0;
};

Bytes bytes_of(const SecretBytes& s) { return Bytes(s.data(), s.data() + s.size()); }

void drain(agent::FrameReader& r, Outcome& o) {
  while (auto m = r.next()) {
    TPMKEY_FUZZ_CHECK(m->size() > 0 && m->size() <= agent::kMaxMessage);
    o.messages.push_back(bytes_of(*m));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Outcome whole, chunked;
  {
    agent::FrameReader r;
    r.feed(data, size);
    drain(r, whole);
    whole.broken = r.broken();
    whole.buffered = r.buffered();
  }
  {
    // FNV-1a of the input seeds an xorshift generator: the chunking is random but replays.
    uint64_t state = 1469598103934665603ull;
    for (size_t i = 0; i < size; ++i) state = (state ^ data[i]) * 1099511628211ull;
    if (state == 0) state = 1;
    agent::FrameReader r;
    for (size_t pos = 0; pos < size;) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      // Mostly small chunks (1-byte writes are a case the server meets), sometimes large ones.
      const size_t limit = (state & 0x300) == 0 ? 4096 : 16;
      const size_t n = std::min<size_t>(size - pos, 1 + state % limit);
      r.feed(data + pos, n);
      pos += n;
      drain(r, chunked);
    }
    chunked.broken = r.broken();
    chunked.buffered = r.buffered();
  }
  TPMKEY_FUZZ_CHECK(whole.messages == chunked.messages);
  TPMKEY_FUZZ_CHECK(whole.broken == chunked.broken);
  TPMKEY_FUZZ_CHECK(whole.buffered == chunked.buffered);
  TPMKEY_FUZZ_CHECK(!whole.broken || whole.buffered == 0);

  // Each message framed again is the stream it came from.
  size_t pos = 0;
  for (const Bytes& m : whole.messages) {
    const Bytes f = agent::frame(m);
    TPMKEY_FUZZ_CHECK(f.size() == m.size() + 4 && pos + f.size() <= size);
    TPMKEY_FUZZ_CHECK(std::memcmp(f.data(), data + pos, f.size()) == 0);
    pos += f.size();
  }
  if (!whole.broken) TPMKEY_FUZZ_CHECK(pos + whole.buffered == size);
  return 0;
}
