#include "test/bus_proxy.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>

#include "test/loopback.h"

namespace tpmkey::test {
namespace {

// One TPM command or response: a 10-byte header whose bytes 2..5 are the big-endian total size.
bool read_message(int fd, std::vector<uint8_t>& m) {
  m.assign(10, 0);
  if (!read_full(fd, m.data(), 10)) return false;
  uint32_t size = uint32_t(m[2]) << 24 | uint32_t(m[3]) << 16 | uint32_t(m[4]) << 8 | m[5];
  if (size < 10 || size > 65536) return false;
  m.resize(size);
  return read_full(fd, m.data() + 10, size - 10);
}

}  // namespace

struct BusProxy::Impl {
  int target = 0, port = 0;
  int listen_data = -1, listen_ctrl = -1;
  mutable std::mutex mu;
  std::string sent, received;
  uint32_t corrupt_cc = 0;
  BusProxy::Rewrite rewrite;
  int corrupted = 0;
  int connections = 0;
  std::vector<int> fds;  // open connections, shut down on destruction
  std::vector<std::thread> threads;

  void track(int fd) {
    std::lock_guard l(mu);
    fds.push_back(fd);
  }
  // swtpm serves one connection at a time: both ends close as soon as either side does.
  void done(int a, int b) {
    std::lock_guard l(mu);
    for (int fd : {a, b}) {
      if (fd < 0) continue;
      std::erase(fds, fd);
      close(fd);
    }
  }
  // The data channel: command and response framed, so commands are recorded whole.
  void serve_data(int client) {
    int server = connect_loopback(target);
    if (server >= 0) track(server);
    if (server >= 0) relay_messages(client, server);
    done(client, server);
  }
  void relay_messages(int client, int server) {
    std::vector<uint8_t> m;
    std::vector<uint8_t> command;
    while (read_message(client, m)) {
      command = m;
      uint32_t cc = uint32_t(m[6]) << 24 | uint32_t(m[7]) << 16 | uint32_t(m[8]) << 8 | m[9];
      {
        std::lock_guard l(mu);
        sent.append(reinterpret_cast<const char*>(m.data()), m.size());
      }
      if (!write_full(server, m.data(), m.size()) || !read_message(server, m)) break;
      {
        std::lock_guard l(mu);
        received.append(reinterpret_cast<const char*>(m.data()), m.size());
        if (corrupt_cc && cc == corrupt_cc && m.size() > 30) {
          m[25] ^= 0x01;  // inside the response parameters (after header and parameterSize)
          corrupt_cc = 0;
          ++corrupted;
        }
        if (rewrite && rewrite(command, m)) {
          const uint32_t size = uint32_t(m.size());
          for (int i = 0; i < 4; ++i) m[2 + i] = uint8_t(size >> (24 - 8 * i));
          ++corrupted;
        }
      }
      if (!write_full(client, m.data(), m.size())) break;
    }
  }
  // The control channel: bytes forwarded both ways as they come.
  void serve_ctrl(int client) {
    int server = connect_loopback(target + 1);
    if (server >= 0) track(server);
    if (server >= 0) relay_bytes(client, server);
    done(client, server);
  }
  void relay_bytes(int client, int server) {
    pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    uint8_t buf[4096];
    while (poll(p, 2, -1) > 0) {
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::read(p[i].fd, buf, sizeof buf);
        if (n <= 0 || !write_full(p[1 - i].fd, buf, size_t(n))) return;
      }
    }
  }
  void accept_loop(int lfd, bool data) {
    for (;;) {
      int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      track(c);
      std::lock_guard l(mu);
      if (data) ++connections;
      threads.emplace_back([this, c, data] { data ? serve_data(c) : serve_ctrl(c); });
    }
  }
};

BusProxy::BusProxy(int swtpm_port) : impl_(new Impl) {
  impl_->target = swtpm_port;
  std::mt19937 rng(std::random_device{}() ^ unsigned(getpid()));
  for (int tries = 0; tries < 200 && impl_->listen_ctrl < 0; ++tries) {
    int p = kPortBase + int(rng() % kPortPairs) * 2;
    impl_->listen_data = listen_loopback(p);
    if (impl_->listen_data < 0) continue;
    impl_->listen_ctrl = listen_loopback(p + 1);
    if (impl_->listen_ctrl < 0) {
      close(impl_->listen_data);
      impl_->listen_data = -1;
      continue;
    }
    impl_->port = p;
  }
  if (impl_->listen_ctrl < 0) throw std::runtime_error("no free port pair for the bus proxy");
  std::lock_guard l(impl_->mu);
  impl_->threads.emplace_back([this] { impl_->accept_loop(impl_->listen_data, true); });
  impl_->threads.emplace_back([this] { impl_->accept_loop(impl_->listen_ctrl, false); });
}

BusProxy::~BusProxy() {
  shutdown(impl_->listen_data, SHUT_RDWR);
  shutdown(impl_->listen_ctrl, SHUT_RDWR);
  std::vector<std::thread> threads;
  {
    std::lock_guard l(impl_->mu);
    for (int fd : impl_->fds) shutdown(fd, SHUT_RDWR);
  }
  // Accept loops may add threads until they return; join in rounds.
  for (;;) {
    {
      std::lock_guard l(impl_->mu);
      threads.swap(impl_->threads);
      for (int fd : impl_->fds) shutdown(fd, SHUT_RDWR);
    }
    if (threads.empty()) break;
    for (auto& t : threads) t.join();
    threads.clear();
  }
  for (int fd : impl_->fds) close(fd);
  close(impl_->listen_data);
  close(impl_->listen_ctrl);
}

std::string BusProxy::tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(impl_->port); }

std::string BusProxy::sent() const {
  std::lock_guard l(impl_->mu);
  return impl_->sent;
}

std::string BusProxy::received() const {
  std::lock_guard l(impl_->mu);
  return impl_->received;
}

std::vector<uint32_t> BusProxy::command_codes() const {
  const std::string s = sent();
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | uint8_t(s[at + i]);
    return v;
  };
  std::vector<uint32_t> codes;
  // Each command: tag (2 bytes), size (4, the whole command), command code (4), ...
  for (size_t at = 0; at + 10 <= s.size();) {
    const uint32_t size = be32(at + 2);
    if (size < 10) break;
    codes.push_back(be32(at + 6));
    at += size;
  }
  return codes;
}

std::vector<uint32_t> BusProxy::take_commands_without_proofs() {
  constexpr uint32_t kReadPublic = 0x173, kReadClock = 0x181;
  std::vector<uint32_t> codes = command_codes();
  clear();
  std::erase_if(codes, [](uint32_t cc) { return cc == kReadPublic || cc == kReadClock; });
  return codes;
}

void BusProxy::clear() {
  std::lock_guard l(impl_->mu);
  impl_->sent.clear();
  impl_->received.clear();
}

void BusProxy::corrupt_next_response(uint32_t command_code) {
  std::lock_guard l(impl_->mu);
  impl_->corrupt_cc = command_code;
}

void BusProxy::rewrite_responses(Rewrite fn) {
  std::lock_guard l(impl_->mu);
  impl_->rewrite = std::move(fn);
}

int BusProxy::connections() const {
  std::lock_guard l(impl_->mu);
  return impl_->connections;
}

int BusProxy::corrupted() const {
  std::lock_guard l(impl_->mu);
  return impl_->corrupted;
}

}  // namespace tpmkey::test
