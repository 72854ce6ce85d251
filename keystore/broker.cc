#include "keystore/broker.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "keystore/context.h"
#include "keystore/files.h"
#include "keystore/public_key.h"
#include "keystore/ssh_wire.h"

namespace tpmkey {
namespace {

// SSH_AGENT_SUCCESS, SSH_AGENTC_EXTENSION, SSH_AGENT_EXTENSION_RESPONSE
constexpr uint8_t kSuccess = 6, kExtension = 27, kExtensionResponse = 29;
// A signature is at most 512 bytes (RSA 4096); the answer is refused above this.
constexpr uint32_t kMaxAnswer = 16 * 1024;

// Whether and why the agent was used or not, for TPMKEY_DEBUG: a line on stderr.
void debug(const std::string& line) {
  const char* d = secure_getenv("TPMKEY_DEBUG");
  if (d && *d) std::fprintf(stderr, "tpmkey: %s\n", line.c_str());
}

// Why the agent was not asked or did not sign, for those lines: "agent PATH: why".
std::string why_not(const Error& e) {
  return e.detail.empty() ? e.text() : (e.where.empty() ? "" : e.where + ": ") + e.detail;
}

bool trusted_uid(uid_t uid) { return uid == geteuid() || uid == 0; }

// The socket itself: a socket (not a link), the user's or root's, writable by nobody else.
Status check_socket(const std::string& path) {
  struct stat st{};
  if (lstat(path.c_str(), &st) != 0) return make_error(Reason::kIo, std::strerror(errno));
  if (!S_ISSOCK(st.st_mode)) return make_error(Reason::kIo, "not a socket");
  if (!trusted_uid(st.st_uid)) return make_error(Reason::kUnsafePermissions, "owned by uid " + std::to_string(st.st_uid));
  if (st.st_mode & (S_IWGRP | S_IWOTH)) return make_error(Reason::kUnsafePermissions, "writable by others");
  return Status::Ok();
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

using Deadline = std::chrono::steady_clock::time_point;

// Waits for `events` on `fd` until the deadline.
bool wait_for(int fd, short events, Deadline deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = poll(&p, 1, int(std::min<long long>(left.count(), 1 << 30)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

bool send_all(int fd, const uint8_t* p, size_t n, Deadline deadline) {
  while (n > 0) {
    const ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      p += w;
      n -= size_t(w);
    } else if (w < 0 && errno == EINTR) {
      continue;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_for(fd, POLLOUT, deadline)) return false;
    } else {
      return false;
    }
  }
  return true;
}

bool recv_all(int fd, uint8_t* p, size_t n, Deadline deadline) {
  while (n > 0) {
    const ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= size_t(r);
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_for(fd, POLLIN, deadline)) return false;
    } else {
      return false;  // closed, or an error
    }
  }
  return true;
}

// Whether `sig` (Key::sign's form) is the key's signature over `digest` with `scheme`.
bool verifies(EVP_PKEY* pub, OSSL_LIB_CTX* libctx, const SignScheme& scheme, const Bytes& sig,
              const uint8_t* digest, size_t len) {
  OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free> vctx(EVP_PKEY_CTX_new_from_pkey(libctx, pub, "provider=default"));
  if (!vctx || EVP_PKEY_verify_init(vctx.get()) <= 0) return false;
  char md[16], pad_pkcs1[] = OSSL_PKEY_RSA_PAD_MODE_PKCSV15, pad_pss[] = OSSL_PKEY_RSA_PAD_MODE_PSS,
               salt[] = OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST;
  std::snprintf(md, sizeof md, "%s", hash_name(scheme.hash));
  OSSL_PARAM params[5];
  size_t i = 0;
  params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, md, 0);
  if (scheme.alg == SigAlg::kRsaPkcs1) {
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, pad_pkcs1, 0);
  } else if (scheme.alg == SigAlg::kRsaPss) {
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, pad_pss, 0);
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, salt, 0);
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, md, 0);
  }
  params[i] = OSSL_PARAM_construct_end();
  const bool ok = EVP_PKEY_CTX_set_params(vctx.get(), params) > 0 &&
                  EVP_PKEY_verify(vctx.get(), sig.data(), sig.size(), digest, len) == 1;
  ERR_clear_error();
  return ok;
}

}  // namespace

Result<Bytes> agent_exchange(const std::string& path, const Bytes& message, std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return make_error(Reason::kInvalidArgument, "the path is too long");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return make_error(Reason::kIo, std::string("socket: ") + std::strerror(errno));
  // A Unix socket connects at once, or waits while the agent's backlog is full: at most `timeout`.
  const auto ms = timeout.count();
  timeval tv{time_t(ms / 1000), suseconds_t(ms % 1000 * 1000)};
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return make_error(Reason::kIo, std::string("connect: ") + std::strerror(errno));
  ucred peer{};
  socklen_t plen = sizeof peer;
  if (getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &peer, &plen) != 0 || plen != sizeof peer)
    return make_error(Reason::kIo, "no peer credentials");
  if (!trusted_uid(peer.uid))
    return make_error(Reason::kUnsafePermissions, "the peer runs as uid " + std::to_string(peer.uid));
  if (peer.pid == getpid()) return make_error(Reason::kInvalidArgument, "the peer is this process");

  const Deadline deadline = std::chrono::steady_clock::now() + timeout;
  SshWriter frame;
  frame.string(message);
  if (!send_all(fd.get(), frame.bytes().data(), frame.bytes().size(), deadline))
    return make_error(Reason::kIo, "the request could not be sent in time");
  uint8_t len[4];
  if (!recv_all(fd.get(), len, 4, deadline)) return make_error(Reason::kIo, "no answer in time");
  const uint32_t n = uint32_t(len[0]) << 24 | uint32_t(len[1]) << 16 | uint32_t(len[2]) << 8 | len[3];
  if (n == 0 || n > kMaxAnswer) return make_error(Reason::kIo, "an answer of " + std::to_string(n) + " bytes");
  Bytes answer(n);
  if (!recv_all(fd.get(), answer.data(), n, deadline)) return make_error(Reason::kIo, "the answer was cut short");
  return answer;
}

std::string default_agent_socket() {
  const char* xdg = secure_getenv("XDG_RUNTIME_DIR");
  struct stat st{};
  if (xdg && *xdg == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode)) return std::string(xdg) + "/tpmkey/agent.sock";
  return "/tmp/tpmkey-" + std::to_string(geteuid()) + "/agent.sock";
}

std::string_view scheme_wire_name(SigAlg alg) {
  switch (alg) {
    case SigAlg::kEcdsa: return "ecdsa";
    case SigAlg::kRsaPkcs1: return "rsassa";
    case SigAlg::kRsaPss: return "rsa-pss";
  }
  return "";
}

std::string_view hash_wire_name(TPM2_ALG_ID hash) {
  switch (hash) {
    case TPM2_ALG_SHA1: return "sha1";
    case TPM2_ALG_SHA256: return "sha256";
    case TPM2_ALG_SHA384: return "sha384";
    case TPM2_ALG_SHA512: return "sha512";
    default: return "";
  }
}

std::optional<SignScheme> scheme_from_wire(std::string_view scheme, std::string_view hash) {
  SignScheme s;
  if (scheme == "ecdsa") s.alg = SigAlg::kEcdsa;
  else if (scheme == "rsassa") s.alg = SigAlg::kRsaPkcs1;
  else if (scheme == "rsa-pss") s.alg = SigAlg::kRsaPss;
  else return std::nullopt;
  for (TPM2_ALG_ID h : {TPM2_ALG_SHA1, TPM2_ALG_SHA256, TPM2_ALG_SHA384, TPM2_ALG_SHA512})
    if (hash == hash_wire_name(h)) {
      s.hash = h;
      return s;
    }
  return std::nullopt;
}

Bytes key_file_id(const KeyFile& kf, OSSL_LIB_CTX* libctx) {
  SshWriter w;
  w.string("tpmkey key file");
  w.u32(kf.parent);
  w.u32(kf.persistent);
  w.string(kf.priv.buffer, kf.priv.size);
  Bytes id(32);
  size_t n = 0;
  if (!EVP_Q_digest(libctx, "SHA256", "provider=default", w.bytes().data(), w.bytes().size(), id.data(), &n) ||
      n != id.size()) {
    ERR_clear_error();
    return {};
  }
  return id;
}

Bytes sign_digest_request(const Bytes& key_blob, const Bytes& file_id, const SignScheme& scheme,
                          const uint8_t* digest, size_t len) {
  SshWriter w;
  w.u8(kExtension);
  w.string(kSignDigestExtension);
  w.string(key_blob);
  w.string(file_id);
  w.string(scheme_wire_name(scheme.alg));
  w.string(hash_wire_name(scheme.hash));
  w.string(digest, len);
  return w.take();
}

namespace {

// The agent to ask and what names the key to it, once the socket and its directory are safe; or
// why there is none to ask.
struct AgentRequest {
  std::string path;
  OSSL_LIB_CTX* libctx = nullptr;
  Bytes blob, file_id;
};

Result<AgentRequest> agent_for(Context& ctx, const KeyFile& kf) {
  const Settings& s = ctx.settings();
  if (!ctx.settings_valid()) return make_error(Reason::kInvalidArgument, "the provider's settings are not valid");
  if (s.agent == "off") return make_error(Reason::kInvalidArgument, "agent = off");
  AgentRequest a;
  a.path = s.agent == "auto" ? default_agent_socket() : s.agent;
  if (Status ok = check_socket(a.path); !ok) return ok.take_error().context("agent " + a.path);
  const std::string dir = a.path.substr(0, a.path.rfind('/'));
  if (Status safe = check_private_dir(dir.empty() ? "/" : dir, "the agent's socket directory"); !safe)
    return safe.take_error().context("agent " + a.path);
  auto crypto = ctx.crypto();
  if (!crypto) return crypto.take_error().context("agent " + a.path);
  a.libctx = (*crypto)->libctx();
  auto blob = openssh_blob(kf.pub.publicArea);
  if (!blob) return blob.take_error().context("agent " + a.path);
  a.file_id = key_file_id(kf, a.libctx);
  if (a.file_id.empty()) return make_error(Reason::kInternal, "no key file id").context("agent " + a.path);
  a.blob = std::move(*blob);
  return a;
}

// Asks the agent for the signature; the signature, verified, or why there is none.
Result<Bytes> ask_agent(Context& ctx, const KeyFile& kf, EVP_PKEY* pub, const SignScheme& scheme,
                        const uint8_t* digest, size_t len) {
  if (hash_wire_name(scheme.hash).empty())
    return make_error(Reason::kUnsupported, "the agent protocol has no name for this hash");
  auto a = agent_for(ctx, kf);
  if (!a) return a.take_error();
  const std::string where = "agent " + a->path;
  auto answer = agent_exchange(a->path, sign_digest_request(a->blob, a->file_id, scheme, digest, len),
                               ctx.settings().timeouts.command);
  if (!answer) return answer.take_error().context(where);
  SshReader r(answer->data(), answer->size());
  uint8_t type = 0;
  SshView name, sig;
  if (!r.u8(&type) || type != kExtensionResponse || !r.string(&name) || name.text() != kSignDigestExtension ||
      !r.string(&sig) || !r.done())
    return make_error(Reason::kKeyNotFound, "the agent does not hold this key or did not sign (answer type " +
                                                std::to_string(type) + ")")
        .context(where);
  Bytes signature = sig.bytes();
  if (!verifies(pub, a->libctx, scheme, signature, digest, len))
    return make_error(Reason::kIo, "the agent's signature does not verify with the key's public half").context(where);
  return signature;
}

}  // namespace

bool broker_holds(Context& ctx, const KeyFile& kf) {
  auto a = agent_for(ctx, kf);
  if (!a) {
    if (ctx.settings().agent != "off") debug(why_not(a.error()) + "; the password is asked for");
    return false;
  }
  SshWriter w;
  w.u8(kExtension);
  w.string(kHoldsKeyExtension);
  w.string(a->blob);
  w.string(a->file_id);
  auto answer = agent_exchange(a->path, w.take(), ctx.settings().timeouts.command);
  const bool held = answer && answer->size() == 1 && (*answer)[0] == kSuccess;
  debug("agent " + a->path + (held ? ": the agent holds this key: no password asked" : ": the agent does not hold this key"));
  return held;
}

Result<Bytes> broker_sign(Context& ctx, const KeyFile& kf, EVP_PKEY* pub, const SignScheme& scheme,
                          const uint8_t* digest, size_t len) {
  auto sig = ask_agent(ctx, kf, pub, scheme, digest, len);
  const Settings& s = ctx.settings();
  if (sig)
    debug("agent " + (s.agent == "auto" ? default_agent_socket() : s.agent) + ": signed by the agent");
  else if (s.agent != "off")
    debug(why_not(sig.error()) + (s.agent_required ? "; agent-required is set, so this process does not sign itself"
                                                 : "; signing with the TPM directly"));
  return sig;
}

}  // namespace tpmkey
