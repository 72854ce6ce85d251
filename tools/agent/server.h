// The agent's socket: framing (uint32 length, then the message), the listening socket with its
// checks, and the poll loop that serves every client without letting one block the others.
#pragma once

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey::agent {

class Agent;

// Larger messages close the connection (OpenSSH's agent has the same limit).
inline constexpr size_t kMaxMessage = 256 * 1024;

// `message` with its length in front.
Bytes frame(const Bytes& message);

// Cuts a byte stream into messages. Bytes it held are wiped when they are handed out or dropped
// (a message may carry a private key or a PIN).
class FrameReader {
 public:
  FrameReader() = default;
  FrameReader(const FrameReader&) = delete;
  FrameReader& operator=(const FrameReader&) = delete;
  ~FrameReader() { clear(); }
  void feed(const uint8_t* p, size_t n);
  // The next whole message, if one has arrived.
  std::optional<SecretBytes> next();
  // A length of 0 or above kMaxMessage was announced: the stream cannot be trusted any more.
  bool broken() const { return broken_; }
  size_t buffered() const { return buf_.size(); }

 private:
  void clear();
  Bytes buf_;
  bool broken_ = false;
};

// The socket the agent listens on. `create_dir`: the default location, whose directory the
// agent makes (0700) if it is missing. Refuses a directory that another user owns or others can
// enter, and a path where an agent already answers; removes a stale socket left by a dead one.
Result<int> listen_on(const std::string& path, bool create_dir);
// The default socket: $XDG_RUNTIME_DIR/tpmkey/agent.sock, else /tmp/tpmkey-UID/agent.sock.
std::string default_socket();

// Serves connections on `listen_fd` until `stop` is set (by a signal handler). Clients whose
// SO_PEERCRED uid is neither this process's nor root are turned away.
void serve(Agent& agent, int listen_fd, const volatile std::sig_atomic_t& stop);

}  // namespace tpmkey::agent
