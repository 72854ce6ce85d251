// Fuzz target: the ssh-agent protocol (tools/agent/agent.h), Agent::handle over the messages of
// one client stream. The input is what a client sends: uint32 length, message, repeated (the
// FrameReader of tools/agent/server.h cuts it, as the server does). Each input gets a new Agent
// over an empty keystore, so a key added or a lock set by one input cannot change the next, and a
// finding replays from its input alone. No TPM is reachable (agent_support.h).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "test/fuzz/agent_support.h"
#include "test/fuzz/fuzz_support.h"
#include "tools/agent/agent.h"
#include "tools/agent/server.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tpmkey;
  fuzz::agent_environment();
  agent::AgentOptions opts;
  opts.keystore = fuzz::agent_keystore();
  opts.serve_keystore = true;
  opts.askpass = "/bin/false";
  auto a = agent::Agent::create(opts);
  TPMKEY_FUZZ_CHECK(a.ok());
  agent::Peer peer;
  peer.uid = getuid();
  peer.pid = getpid();

  agent::FrameReader frames;
  frames.feed(data, size);
  // Bounded, so one input stays one quick run (each lock or unlock is a 100000-round PBKDF2).
  for (int n = 0; n < 32; ++n) {
    auto m = frames.next();
    if (!m) break;
    Bytes message(m->data(), m->data() + m->size());
    const Bytes response = (*a)->handle(peer, message.data(), message.size());
    TPMKEY_FUZZ_CHECK(!response.empty());
    TPMKEY_FUZZ_CHECK(response.size() <= agent::kMaxMessage);
    (void)(*a)->expire();
  }
  (*a)->idle();
  return 0;
}
