// Test support: a man in the middle on the TPM bus (swtpm's TCP protocol).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace tpmkey::test {

// A man in the middle on the TPM bus: listens on a free loopback port pair and forwards to a swtpm
// (data and control channels), recording every command sent to the TPM. It can also corrupt the
// response to a command, as an interposer on a real bus could.
class BusProxy {
 public:
  explicit BusProxy(int swtpm_port);
  ~BusProxy();
  BusProxy(const BusProxy&) = delete;
  BusProxy& operator=(const BusProxy&) = delete;
  std::string tcti() const;
  // Every command byte the TPM was sent so far, and whether `needle` is among them.
  std::string sent() const;
  bool saw(const std::string& needle) const { return sent().find(needle) != std::string::npos; }
  // Every response byte the TPM sent back (as it came, before any corruption), and whether
  // `needle` is among those or the commands.
  std::string received() const;
  bool crossed(const std::string& needle) const { return saw(needle) || received().find(needle) != std::string::npos; }
  // How many connections clients opened on the data channel so far.
  int connections() const;
  // The command codes of those commands, in order.
  std::vector<uint32_t> command_codes() const;
  // The command codes since the last call (which clears the record), without the audited reads
  // that prove a handle or the session again after a pause of over a millisecond on a simulator
  // socket (TPM2_ReadPublic, TPM2_ReadClock; docs/sessions.md): how many of those there are
  // depends on the machine's load, never on what tpmkey was asked to do.
  std::vector<uint32_t> take_commands_without_proofs();
  void clear();
  // Flips one byte in the parameters of the next response to a command with this code.
  void corrupt_next_response(uint32_t command_code);
  // Rewrites responses from now on: `fn` sees each command and its response (the whole message,
  // header included) and may change the response, returning true when it did (it then counts in
  // corrupted()). The proxy fixes the header's size field. An empty `fn` stops rewriting.
  using Rewrite = std::function<bool(const std::vector<uint8_t>& command, std::vector<uint8_t>& response)>;
  void rewrite_responses(Rewrite fn);
  int corrupted() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tpmkey::test
