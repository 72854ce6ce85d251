#include "tools/agent/server.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>

#include "keystore/broker.h"
#include "tools/agent/agent.h"
#include "tools/agent/log.h"

namespace tpmkey::agent {
namespace {

// More connections than this are accepted and closed at once.
constexpr size_t kMaxClients = 256;
// Answers queued for one client beyond which the agent neither reads its requests nor answers
// those it has read, until the client reads (each request can bring a much larger answer).
constexpr size_t kMaxUnread = 1 << 20;

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

std::string errno_text() { return std::strerror(errno); }

// Makes `dir` (mode 0700) if needed and checks that it is a directory of ours that nobody else
// can enter: the socket's own mode is not enough on every system.
Status check_dir(const std::string& dir, bool create) {
  if (create && mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return make_error(Reason::kIo, "cannot create " + dir + ": " + errno_text());
  // The default directory is the agent's own and must not be a symbolic link; one named with -a
  // may be reached through one (/var/run is a link to /run).
  struct stat st{};
  if ((create ? lstat(dir.c_str(), &st) : stat(dir.c_str(), &st)) != 0)
    return make_error(Reason::kIo, "cannot use " + dir + ": " + errno_text());
  if (!S_ISDIR(st.st_mode)) return make_error(Reason::kIo, dir + " is not a directory");
  if (create) {
    if (st.st_uid != geteuid()) return make_error(Reason::kIo, dir + " belongs to another user: refusing to use it");
    if (st.st_mode & 077) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
      return make_error(Reason::kIo, dir + " has mode " + mode + ": other users can reach the socket; it must be 0700");
    }
  }
  return Status::Ok();
}

std::string parent_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

struct Client {
  int fd = -1;
  Peer peer;
  FrameReader in;
  Bytes out;
  size_t out_done = 0;
};

void close_client(Client& c) {
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
}

void accept_clients(int listen_fd, std::list<Client>& clients) {
  for (;;) {
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) log_error("accept: " + errno_text());
      return;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      log_error("cannot check a client's credentials: " + errno_text() + "; closed");
      close(fd);
      continue;
    }
    if (cred.uid != geteuid() && cred.uid != 0) {
      log_error("refused a client of uid " + std::to_string(cred.uid) + " (pid " + std::to_string(cred.pid) +
                "): only uid " + std::to_string(geteuid()) + " and root may use this agent");
      close(fd);
      continue;
    }
    if (clients.size() >= kMaxClients) {
      log_error("more than " + std::to_string(kMaxClients) + " clients at once: closed a new one");
      close(fd);
      continue;
    }
    Client& c = clients.emplace_back();
    c.fd = fd;
    c.peer.uid = cred.uid;
    c.peer.pid = cred.pid;
    log_debug("client pid " + std::to_string(cred.pid) + " connected");
  }
}

// Sends what is queued; false when the connection is gone.
bool flush(Client& c) {
  while (c.out_done < c.out.size()) {
    ssize_t n = send(c.fd, c.out.data() + c.out_done, c.out.size() - c.out_done, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_done += size_t(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    return false;
  }
  c.out.clear();
  c.out_done = 0;
  return true;
}

// Whether to read from the client: its unread answers are under the limit, and it is not a whole
// largest message ahead.
bool wants_input(const Client& c) { return c.out.size() < kMaxUnread && c.in.buffered() < 4 + kMaxMessage; }

// Answers the whole messages that have arrived while the unread answers stay under the limit;
// false when the stream is broken.
bool answer(Agent& agent, Client& c) {
  while (c.out.size() < kMaxUnread) {
    auto m = c.in.next();
    if (!m) break;
    Bytes reply = agent.handle(c.peer, m->data(), m->size());
    Bytes f = frame(reply);
    c.out.insert(c.out.end(), f.begin(), f.end());
  }
  if (c.in.broken()) {
    log_error("client pid " + std::to_string(c.peer.pid) + " sent a message of length 0 or over " +
              std::to_string(kMaxMessage) + " bytes: connection closed");
    return false;
  }
  return true;
}

// Reads what arrived and answers the whole messages; false when the connection is to close.
bool serve_input(Agent& agent, Client& c) {
  uint8_t buf[16384];
  bool open = true;
  while (wants_input(c)) {
    ssize_t n = recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      c.in.feed(buf, size_t(n));
      OPENSSL_cleanse(buf, size_t(n));
      if (size_t(n) < sizeof buf) break;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    open = false;  // closed, or an error: answer what came before it
    break;
  }
  const bool ok = answer(agent, c);
  return ok && open;
}

}  // namespace

Bytes frame(const Bytes& message) {
  Bytes out;
  out.reserve(4 + message.size());
  SshWriter w;
  w.u32(uint32_t(message.size()));
  out = w.take();
  out.insert(out.end(), message.begin(), message.end());
  return out;
}

void FrameReader::feed(const uint8_t* p, size_t n) {
  if (broken_) return;
  // Grow into a fresh buffer, wiping the old one, so no copy of a secret is left behind.
  if (buf_.size() + n > buf_.capacity()) {
    size_t want = buf_.size() + n;
    if (buf_.size() >= 4) want = std::max(want, std::min<size_t>(4 + be32(buf_.data()), 4 + kMaxMessage));
    Bytes next;
    next.reserve(want);
    next.insert(next.end(), buf_.begin(), buf_.end());
    clear();
    buf_ = std::move(next);
  }
  buf_.insert(buf_.end(), p, p + n);
}

std::optional<SecretBytes> FrameReader::next() {
  if (broken_ || buf_.size() < 4) return std::nullopt;
  const uint32_t len = be32(buf_.data());
  if (len == 0 || len > kMaxMessage) {
    broken_ = true;
    clear();
    return std::nullopt;
  }
  if (buf_.size() < 4 + size_t(len)) return std::nullopt;
  SecretBytes m(buf_.data() + 4, len);
  const size_t rest = buf_.size() - 4 - len;
  std::memmove(buf_.data(), buf_.data() + 4 + len, rest);
  OPENSSL_cleanse(buf_.data() + rest, buf_.size() - rest);
  buf_.resize(rest);
  return m;
}

void FrameReader::clear() {
  if (!buf_.empty()) OPENSSL_cleanse(buf_.data(), buf_.size());
  buf_.clear();
}

// Where the provider looks for the agent by default, too (keystore/broker.h).
std::string default_socket() { return default_agent_socket(); }

Result<int> listen_on(const std::string& path, bool create_dir) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return make_error(Reason::kInvalidArgument, "the socket path must have 1 to " +
                                                    std::to_string(sizeof addr.sun_path - 1) + " characters");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  TPMKEY_TRY(check_dir(parent_of(path), create_dir));

  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return make_error(Reason::kIo, path + " exists and is not a socket: refusing to replace it");
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = probe >= 0 && connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    if (probe >= 0) close(probe);
    if (live) return make_error(Reason::kIo, "an agent is already listening at " + path);
    unlink(path.c_str());  // left by an agent that died
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return make_error(Reason::kIo, "socket: " + errno_text());
  mode_t old = umask(0177);  // the socket is made 0600
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int bind_errno = errno;
  umask(old);
  if (rc != 0) {
    close(fd);
    return make_error(Reason::kIo, "cannot bind " + path + ": " + std::strerror(bind_errno));
  }
  if (chmod(path.c_str(), 0600) != 0 || listen(fd, 128) != 0) {
    std::string why = errno_text();
    close(fd);
    unlink(path.c_str());
    return make_error(Reason::kIo, "cannot listen on " + path + ": " + why);
  }
  return fd;
}

void serve(Agent& agent, int listen_fd, const volatile std::sig_atomic_t& stop) {
  // The stopping signals are let in only while ppoll waits: one that came between the check of
  // `stop` and the wait would otherwise go unnoticed until the wait ended.
  sigset_t stopping, waiting;
  sigemptyset(&stopping);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&stopping, sig);
  pthread_sigmask(SIG_BLOCK, &stopping, &waiting);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigdelset(&waiting, sig);
  std::list<Client> clients;
  std::vector<pollfd> fds;
  std::vector<Client*> order;
  // After a second without a request the agent gives its TPM slots back (Agent::idle), once.
  constexpr int kIdleMs = 1000;
  bool idle_done = true;
  while (!stop) {
    int expiry_ms = agent.expire();
    if (!idle_done) expiry_ms = expiry_ms < 0 ? kIdleMs : std::min(expiry_ms, kIdleMs);
    fds.clear();
    order.clear();
    fds.push_back({listen_fd, POLLIN, 0});
    for (auto& c : clients) {
      // A client that does not read its answers is not read from either, until it catches up.
      const short in = wants_input(c) ? POLLIN : 0;
      fds.push_back({c.fd, short(in | (c.out.empty() ? 0 : POLLOUT)), 0});
      order.push_back(&c);
    }
    const int wait_ms = expiry_ms < 0 ? 60000 : std::min(expiry_ms + 1, 60000);
    const timespec wait{wait_ms / 1000, long(wait_ms % 1000) * 1000000};
    int n = ppoll(fds.data(), fds.size(), &wait, &waiting);
    if (n < 0) {
      if (errno == EINTR) continue;
      log_error("poll: " + errno_text());
      return;
    }
    if (n == 0 && !idle_done) {
      agent.idle();
      idle_done = true;
      continue;
    }
    if (n > 0) idle_done = false;  // something happened: the next quiet second parks again
    for (size_t i = 1; i < fds.size(); ++i) {
      Client& c = *order[i - 1];
      bool ok = true;
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR) && (fds[i].events & POLLIN)) ok = serve_input(agent, c);
      else if (fds[i].revents & (POLLHUP | POLLERR)) ok = false;
      if (ok && !c.out.empty()) ok = flush(c);
      // Requests held back while the answers piled up, now that the client has read them: until
      // answers wait again (POLLOUT brings the client back) or none is left (nor would POLLIN).
      while (ok && c.out.empty()) {
        const size_t left = c.in.buffered();
        ok = answer(agent, c) && (c.out.empty() || flush(c));
        if (c.in.buffered() == left) break;
      }
      if (!ok) {
        if (!c.out.empty()) flush(c);  // the answers to what came before, if they fit
        close_client(c);
      }
    }
    // Closed connections go first, so the places they leave count for new ones.
    clients.remove_if([](const Client& c) { return c.fd < 0; });
    if (fds[0].revents & POLLIN) accept_clients(listen_fd, clients);
  }
  for (auto& c : clients) close_client(c);
  pthread_sigmask(SIG_UNBLOCK, &stopping, nullptr);
}

}  // namespace tpmkey::agent
