#include "tools/agent/upstream.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "tools/agent/server.h"

namespace tpmkey::agent {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

Result<Bytes> ask_upstream(const std::string& socket_path, const Bytes& message, int timeout_ms) {
  const std::string what = "upstream agent " + socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) return make_error(Reason::kInvalidArgument, "socket path too long").context(what);
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  Fd s{socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (s.fd < 0 || connect(s.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return make_error(Reason::kIo, std::string("cannot connect: ") + std::strerror(errno)).context(what);
  fcntl(s.fd, F_SETFL, O_NONBLOCK);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto wait = [&](short events) {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{s.fd, events, 0};
      int n = poll(&p, 1, int(left.count()));
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) return false;
    }
  };
  Bytes out = frame(message);
  for (size_t done = 0; done < out.size();) {
    ssize_t n = send(s.fd, out.data() + done, out.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += size_t(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait(POLLOUT)) return make_error(Reason::kIo, "timed out sending").context(what);
    } else {
      return make_error(Reason::kIo, "connection lost").context(what);
    }
  }
  FrameReader reader;
  for (;;) {
    if (auto m = reader.next()) return Bytes(m->data(), m->data() + m->size());
    if (reader.broken()) return make_error(Reason::kIo, "sent a malformed or oversized answer").context(what);
    uint8_t buf[4096];
    ssize_t n = recv(s.fd, buf, sizeof buf, 0);
    if (n > 0) {
      reader.feed(buf, size_t(n));
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait(POLLIN)) return make_error(Reason::kIo, "no answer in time").context(what);
    } else {
      return make_error(Reason::kIo, "closed the connection").context(what);
    }
  }
}

}  // namespace tpmkey::agent
