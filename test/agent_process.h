// Test support: a real `tpmkey agent -D` process on a socket of its own, ssh-add against it, and
// a raw client for protocol tests (frames sent as given, answers read with a time limit).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "test/process.h"

namespace tpmkey::test {

class AgentProcess {
 public:
  // Starts `tpmkey agent -D -a DIR/agent.sock --tcti TCTI --keystore KEYSTORE EXTRA...` with the
  // extra environment entries "K=V" (its log, stderr, in DIR/agent.log) and waits until the
  // socket accepts connections; throws with the log if it does not.
  AgentProcess(const std::string& dir, const std::string& tcti, const std::string& keystore,
               const std::vector<std::string>& extra = {}, const std::vector<std::string>& env = {});
  ~AgentProcess();
  AgentProcess(const AgentProcess&) = delete;
  AgentProcess& operator=(const AgentProcess&) = delete;

  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }
  std::string log() const;
  // SIGTERM and wait; the exit code (128 + signal if it died of one). -1 if it was stopped already.
  int stop();
  // ssh-add ARGS with SSH_AUTH_SOCK set to this agent (and `env`).
  CommandResult ssh_add(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                        const std::string& stdin_text = "") const;

 private:
  pid_t pid_ = -1;
  std::string socket_, log_;
};

// An executable script in `dir` for SSH_ASKPASS that prints `answer` and exits with `status`
// (and appends its prompt to DIR/NAME.prompts).
std::string askpass_script(const std::string& dir, const std::string& name, const std::string& answer,
                           int status = 0);

// One connection to an agent socket, for crafted frames.
class AgentConnection {
 public:
  explicit AgentConnection(const std::string& socket);
  ~AgentConnection();
  AgentConnection(const AgentConnection&) = delete;
  AgentConnection& operator=(const AgentConnection&) = delete;
  bool connected() const { return fd_ >= 0; }
  // Writes bytes as given (no length added).
  bool send_raw(const std::vector<uint8_t>& bytes);
  // Writes one message with its length in front.
  bool send(const std::vector<uint8_t>& message);
  // The next answer (without its length), or nullopt if the agent closed the connection or sent
  // nothing within `timeout_ms`.
  std::optional<std::vector<uint8_t>> receive(int timeout_ms = 10000);
  // send, then receive.
  std::optional<std::vector<uint8_t>> request(const std::vector<uint8_t>& message, int timeout_ms = 10000);
  // Whether the agent closed the connection (waits up to `timeout_ms`).
  bool closed_by_agent(int timeout_ms = 5000);

 private:
  int fd_ = -1;
};

}  // namespace tpmkey::test
