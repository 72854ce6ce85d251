// tpmkey's client for swtpm's socket protocol ("swtpm:host=H,port=P" or "swtpm:path=SOCKET"), the
// same strings tpm2-tss's tcti-swtpm takes. tpm2-tss 3.2.1's module opens its sockets without
// close-on-exec, writes with SIGPIPE enabled, offers no poll handles and waits forever for a TPM
// that does not answer; tpmkey lives in long-running programs that fork and exec, so it speaks
// the protocol itself:
//   - swtpm serves one client connection at a time, and serves nobody else while a client stays
//     connected: a connection lasts for one command (connect, send, read the response, close,
//     as tcti-swtpm does), or while the link is held (Link::hold) for the commands of one
//     operation, and never longer;
//   - every socket is close-on-exec and written with MSG_NOSIGNAL;
//   - connect, send and receive all give up at the command's deadline;
//   - the data channel only: tpmkey never needs the control channel (locality 0 is the default).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "keystore/tpm/transport.h"

namespace tpmkey {
namespace {

constexpr size_t kHeaderSize = 10;        // tag, size, code
constexpr size_t kMaxResponse = 64 * 1024;  // more than any TPM 2.0 buffer

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

int millis_left(Deadline d) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(d - std::chrono::steady_clock::now()).count();
  return left < 0 ? 0 : left > 86'400'000 ? 86'400'000 : int(left);
}

class SwtpmLink final : public Link {
 public:
  ~SwtpmLink() override { disconnect(); }

  Status configure(const std::string& config) {
    std::string host = "localhost", port = "2321";
    size_t pos = 0;
    while (pos <= config.size() && !config.empty()) {
      size_t end = config.find(',', pos);
      if (end == std::string::npos) end = config.size();
      const std::string kv = config.substr(pos, end - pos);
      const size_t eq = kv.find('=');
      const std::string key = kv.substr(0, eq), value = eq == std::string::npos ? "" : kv.substr(eq + 1);
      if (eq == std::string::npos || value.empty())
        return make_error(Reason::kInvalidArgument, "swtpm TCTI: \"" + kv.substr(0, 64) + "\" is not KEY=VALUE");
      if (key == "host") host = value;
      else if (key == "port") port = value;
      else if (key == "path") path_ = value;
      else
        return make_error(Reason::kInvalidArgument,
                          "swtpm TCTI: unknown key \"" + key.substr(0, 32) + "\" (host, port or path)");
      pos = end + 1;
    }
    if (!path_.empty()) {
      if (path_.size() >= sizeof(sockaddr_un::sun_path))
        return make_error(Reason::kInvalidArgument, "swtpm TCTI: the socket path is too long");
      where_ = path_;
      return Status::Ok();
    }
    char* end = nullptr;
    const long p = std::strtol(port.c_str(), &end, 10);
    if (*end || p <= 0 || p > 65535)
      return make_error(Reason::kInvalidArgument, "swtpm TCTI: port must be 1-65535, not \"" + port.substr(0, 16) + "\"");
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int e = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); e != 0)
      return make_error(Reason::kTpmUnreachable, "swtpm TCTI: cannot resolve \"" + host.substr(0, 64) + "\": " + gai_strerror(e));
    for (addrinfo* a = res; a; a = a->ai_next) {
      Address addr;
      addr.family = a->ai_family;
      addr.len = a->ai_addrlen;
      std::memcpy(&addr.storage, a->ai_addr, a->ai_addrlen);
      addresses_.push_back(addr);
    }
    freeaddrinfo(res);
    where_ = host + ":" + port;
    return Status::Ok();
  }

  TSS2_RC transmit(const uint8_t* cmd, size_t size, Deadline deadline) override {
    // A held connection carries the next command only after the last one's whole response: a
    // response still owed (its command abandoned) would be read as this command's.
    if (!held_ || awaiting_) disconnect();
    response_.clear();
    if (fd_ < 0 && !connect_before(deadline)) return TSS2_TCTI_RC_IO_ERROR;
    size_t off = 0;
    while (off < size) {
      if (!wait_for(POLLOUT, deadline)) return fail("send"), TSS2_TCTI_RC_IO_ERROR;
      ssize_t n = send(fd_, cmd + off, size - off, MSG_NOSIGNAL);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) return fail("send"), TSS2_TCTI_RC_IO_ERROR;
      off += size_t(n);
    }
    awaiting_ = true;
    return TSS2_RC_SUCCESS;
  }

  TSS2_RC receive(size_t* size, uint8_t* rsp, Deadline deadline) override {
    if (response_.empty()) {
      if (fd_ < 0 || !awaiting_) return TSS2_TCTI_RC_BAD_SEQUENCE;
      uint8_t header[kHeaderSize];
      if (!read_exactly(header, kHeaderSize, deadline)) return TSS2_TCTI_RC_IO_ERROR;
      const uint32_t total = be32(header + 2);
      if (total < kHeaderSize || total > kMaxResponse) {
        disconnect();
        error_ = "the TPM sent a response of impossible size " + std::to_string(total);
        return TSS2_TCTI_RC_MALFORMED_RESPONSE;
      }
      response_.assign(header, header + kHeaderSize);
      response_.resize(total);
      if (!read_exactly(response_.data() + kHeaderSize, total - kHeaderSize, deadline)) {
        response_.clear();
        return TSS2_TCTI_RC_IO_ERROR;
      }
      awaiting_ = false;
      if (!held_) disconnect();  // swtpm serves the next client
    }
    if (!rsp) {
      *size = response_.size();
      return TSS2_RC_SUCCESS;
    }
    if (*size < response_.size()) {
      *size = response_.size();
      return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
    }
    std::memcpy(rsp, response_.data(), response_.size());
    *size = response_.size();
    response_.clear();
    return TSS2_RC_SUCCESS;
  }

  bool continuous() const override { return false; }

  void hold(bool on) override {
    held_ = on;
    if (!on) disconnect();
  }

  void forget_in_child() override {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  struct Address {
    int family = AF_UNSPEC;
    socklen_t len = 0;
    sockaddr_storage storage{};
  };

  void disconnect() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    awaiting_ = false;
  }

  // Records why `what` failed (errno, or the deadline) and drops the connection.
  bool fail(const char* what) {
    if (!timed_out_) error_ = std::string(what) + "(" + where_ + "): " + std::strerror(errno ? errno : EIO);
    else error_ = std::string(what) + "(" + where_ + ")";
    disconnect();
    return false;
  }

  bool wait_for(short events, Deadline deadline) {
    pollfd p{fd_, events, 0};
    for (;;) {
      int r = poll(&p, 1, millis_left(deadline));
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) timed_out_ = true;
      return r > 0;
    }
  }

  bool read_exactly(uint8_t* p, size_t n, Deadline deadline) {
    while (n) {
      if (!wait_for(POLLIN, deadline)) return fail("receive");
      ssize_t r = recv(fd_, p, n, 0);
      if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (r == 0) {
        error_ = "receive(" + where_ + "): the TPM closed the connection before answering";
        disconnect();
        return false;
      }
      if (r < 0) return fail("receive");
      p += r;
      n -= size_t(r);
    }
    return true;
  }

  bool connect_one(const sockaddr* sa, socklen_t len, int family, Deadline deadline) {
    fd_ = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) return fail("socket");
    if (::connect(fd_, sa, len) == 0) return true;
    if (errno != EINPROGRESS && errno != EAGAIN) return fail("connect");
    if (!wait_for(POLLOUT, deadline)) return fail("connect");
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
      errno = err;
      return fail("connect");
    }
    return true;
  }

  bool connect_before(Deadline deadline) {
    if (!path_.empty()) {
      sockaddr_un un{};
      un.sun_family = AF_UNIX;
      std::memcpy(un.sun_path, path_.data(), path_.size());
      return connect_one(reinterpret_cast<sockaddr*>(&un), sizeof un, AF_UNIX, deadline);
    }
    for (const Address& a : addresses_) {
      if (connect_one(reinterpret_cast<const sockaddr*>(&a.storage), a.len, a.family, deadline)) return true;
      if (timed_out_) return false;
    }
    if (addresses_.empty()) error_ = "connect(" + where_ + "): no address";
    return false;
  }

  std::string path_, where_;
  std::vector<Address> addresses_;
  int fd_ = -1;
  bool held_ = false;
  bool awaiting_ = false;  // a command was sent and its response not yet read whole
  Bytes response_;
};

}  // namespace

Result<std::unique_ptr<Link>> open_swtpm_link(const std::string& config) {
  auto link = std::make_unique<SwtpmLink>();
  TPMKEY_TRY(link->configure(config));
  return std::unique_ptr<Link>(std::move(link));
}

}  // namespace tpmkey
