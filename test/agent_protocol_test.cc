// Protocol tests of `tpmkey agent` (draft-miller-ssh-agent, RFC 9987; OpenSSH PROTOCOL.agent): a
// real agent process on a socket of its own, in front of this binary's swtpm, sent crafted frames.
// Every message type, valid (each signature checked by OpenSSL's default provider against the
// key's public half, which the tests encode themselves) and malformed (cut short at every byte,
// trailing bytes, negative mpints, key halves that do not match, key types the agent does not
// take); framing (lengths of 0 and above 256 KiB, a frame in 1-byte writes, pipelined frames, a
// client that stalls half-way, one that never reads its answers, more than 256 clients); 32
// concurrent clients with the TPM commands counted on the bus; the socket's checks (modes, the
// default directory, a live agent on the path, a stale socket, a client of another uid); a TPM
// that dies or stops under the agent; and a TPM left clean once the agent exits (TearDown). The
// last tests reproduce bugs found and fixed: each would fail again if one came back.
//
// Message numbers and encodings are written out here from the specification, not taken from the
// agent's headers or encoder, so a mistake there shows as a failure here.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "keystore/keyfile.h"
#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

using Clock = std::chrono::steady_clock;
using Buf = std::vector<uint8_t>;
using namespace std::chrono_literals;

// Message numbers (draft-miller-ssh-agent, "Message numbers").
constexpr uint8_t kFailure = 5, kSuccess = 6, kRequestIdentities = 11, kIdentitiesAnswer = 12, kSignRequest = 13,
                  kSignResponse = 14, kAddIdentity = 17, kRemoveIdentity = 18, kRemoveAllIdentities = 19,
                  kAddSmartcardKey = 20, kRemoveSmartcardKey = 21, kLock = 22, kUnlock = 23, kAddIdConstrained = 25,
                  kAddSmartcardKeyConstrained = 26, kExtension = 27, kExtensionResponse = 29;
// Key constraints, and the SIGN_REQUEST flags for RSA.
constexpr uint8_t kConstrainLifetime = 1, kConstrainConfirm = 2, kConstrainExtension = 255;
constexpr uint32_t kRsaSha2_256 = 2, kRsaSha2_512 = 4;
// The largest message the agent takes (OpenSSH's agent has the same limit).
constexpr size_t kMaxMessage = 256 * 1024;
constexpr uint32_t kTpmCcSign = 0x0000015D, kTpmCcReadPublic = 0x00000173;
const Buf kFailureAnswer{kFailure}, kSuccessAnswer{kSuccess};

// The SSH wire encoding (RFC 4251 section 5).
class Wire {
 public:
  Wire& u8(uint8_t v) {
    b_.push_back(v);
    return *this;
  }
  Wire& u32(uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b_.push_back(uint8_t(v >> s));
    return *this;
  }
  Wire& raw(const Buf& v) {
    b_.insert(b_.end(), v.begin(), v.end());
    return *this;
  }
  Wire& str(const Buf& v) { return u32(uint32_t(v.size())).raw(v); }
  Wire& str(std::string_view s) { return str(Buf(s.begin(), s.end())); }
  // A non-negative mpint from a big-endian magnitude: no leading zeros, one zero byte in front
  // when the top bit is set.
  Wire& mpint(Buf m) {
    m.erase(m.begin(), std::find_if(m.begin(), m.end(), [](uint8_t b) { return b != 0; }));
    if (!m.empty() && (m[0] & 0x80)) m.insert(m.begin(), 0);
    return str(m);
  }
  operator Buf() const { return b_; }

 private:
  Buf b_;
};

class Parse {
 public:
  explicit Parse(const Buf& b) : b_(b) {}
  bool u8(uint8_t* v) {
    if (at_ >= b_.size()) return false;
    *v = b_[at_++];
    return true;
  }
  bool u32(uint32_t* v) {
    if (b_.size() - at_ < 4) return false;
    *v = uint32_t(b_[at_]) << 24 | uint32_t(b_[at_ + 1]) << 16 | uint32_t(b_[at_ + 2]) << 8 | b_[at_ + 3];
    at_ += 4;
    return true;
  }
  bool str(Buf* v) {
    uint32_t n = 0;
    if (!u32(&n) || b_.size() - at_ < n) return false;
    v->assign(b_.begin() + long(at_), b_.begin() + long(at_ + n));
    at_ += n;
    return true;
  }
  bool str(std::string* s) {
    Buf v;
    if (!str(&v)) return false;
    s->assign(v.begin(), v.end());
    return true;
  }
  // A positive mpint in its one valid form (RFC 4251): no sign bit, no needless zero byte.
  bool positive_mpint(Buf* m) {
    if (!str(m) || m->empty() || ((*m)[0] & 0x80)) return false;
    if ((*m)[0] == 0) {
      if (m->size() == 1 || !((*m)[1] & 0x80)) return false;
      m->erase(m->begin());
    }
    return true;
  }
  bool done() const { return at_ == b_.size(); }

 private:
  const Buf& b_;
  size_t at_ = 0;
};

Buf text(std::string_view s) { return Buf(s.begin(), s.end()); }

std::string describe(const std::optional<Buf>& a) {
  if (!a) return "no answer";
  std::string out = "answer of " + std::to_string(a->size()) + " bytes:";
  char h[4];
  for (size_t i = 0; i < a->size() && i < 32; ++i) {
    std::snprintf(h, sizeof h, " %02x", (*a)[i]);
    out += h;
  }
  return out + (a->size() > 32 ? " ..." : "");
}

Buf bn_bytes(const BIGNUM* bn) {
  Buf b(size_t(BN_num_bytes(bn)));
  BN_bn2bin(bn, b.data());
  return b;
}

Buf bn_param(EVP_PKEY* k, const char* name) {
  BIGNUM* bn = nullptr;
  if (!EVP_PKEY_get_bn_param(k, name, &bn)) return {};
  Buf b = bn_bytes(bn);
  BN_clear_free(bn);
  return b;
}

// ---- Keys as the tests hold them ------------------------------------------------------------

// The SSH public key blob of a key the default provider holds.
Buf ssh_blob(EVP_PKEY* k) {
  if (EVP_PKEY_is_a(k, "EC")) {
    char group[64] = {};
    size_t glen = 0;
    EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen);
    const std::string g = group;
    const std::string curve = g == "prime256v1" || g == "P-256"   ? "nistp256"
                              : g == "secp384r1" || g == "P-384" ? "nistp384"
                                                                  : "nistp521";
    Buf q(1 + 2 * 66);
    size_t qlen = 0;
    EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, q.data(), q.size(), &qlen);
    q.resize(qlen);
    return Wire().str("ecdsa-sha2-" + curve).str(curve).str(q);
  }
  if (EVP_PKEY_is_a(k, "RSA"))
    return Wire().str("ssh-rsa").mpint(bn_param(k, OSSL_PKEY_PARAM_RSA_E)).mpint(bn_param(k, OSSL_PKEY_PARAM_RSA_N));
  Buf a(32);
  size_t alen = a.size();
  EVP_PKEY_get_raw_public_key(k, a.data(), &alen);
  return Wire().str("ssh-ed25519").str(a);
}

// A software key: the default provider's key, its blob, and its ADD_IDENTITY fields (from the key
// type up to the comment, OpenSSH's order).
struct SoftKey {
  PkeyPtr pkey{nullptr, EVP_PKEY_free};
  Buf blob, fields;
};

struct Ed25519Parts {
  Buf seed, pub;
};
Ed25519Parts ed25519_parts(EVP_PKEY* k) {
  Ed25519Parts p{Buf(32), Buf(32)};
  size_t n = 32, m = 32;
  EVP_PKEY_get_raw_private_key(k, p.seed.data(), &n);
  EVP_PKEY_get_raw_public_key(k, p.pub.data(), &m);
  return p;
}
Buf ed25519_fields(const Buf& pub, const Buf& seed, const Buf& pub_in_private) {
  Buf priv = seed;
  priv.insert(priv.end(), pub_in_private.begin(), pub_in_private.end());
  return Wire().str("ssh-ed25519").str(pub).str(priv);
}

SoftKey ed25519_key() {
  SoftKey s;
  s.pkey.reset(EVP_PKEY_Q_keygen(default_only(), nullptr, "ED25519"));
  Ed25519Parts p = ed25519_parts(s.pkey.get());
  s.blob = ssh_blob(s.pkey.get());
  s.fields = ed25519_fields(p.pub, p.seed, p.pub);
  return s;
}

struct EcParts {
  std::string curve;
  Buf q, d;
};
EcParts ec_parts(EVP_PKEY* k) {
  EcParts p;
  Buf blob = ssh_blob(k);
  Parse r(blob);
  std::string type;
  r.str(&type);
  r.str(&p.curve);
  r.str(&p.q);
  p.d = bn_param(k, OSSL_PKEY_PARAM_PRIV_KEY);
  return p;
}
Buf ecdsa_fields(const std::string& type, const std::string& curve, const Buf& q, const Buf& d_string) {
  return Wire().str(type).str(curve).str(q).str(d_string);
}

SoftKey ecdsa_key(const char* group) {
  SoftKey s;
  s.pkey.reset(EVP_PKEY_Q_keygen(default_only(), nullptr, "EC", group));
  EcParts p = ec_parts(s.pkey.get());
  s.blob = ssh_blob(s.pkey.get());
  s.fields = Wire().str("ecdsa-sha2-" + p.curve).str(p.curve).str(p.q).mpint(p.d);
  return s;
}

struct RsaParts {
  Buf n, e, d, iqmp, p, q;
};
RsaParts rsa_parts(EVP_PKEY* k) {
  return {bn_param(k, OSSL_PKEY_PARAM_RSA_N),       bn_param(k, OSSL_PKEY_PARAM_RSA_E),
          bn_param(k, OSSL_PKEY_PARAM_RSA_D),       bn_param(k, OSSL_PKEY_PARAM_RSA_COEFFICIENT1),
          bn_param(k, OSSL_PKEY_PARAM_RSA_FACTOR1), bn_param(k, OSSL_PKEY_PARAM_RSA_FACTOR2)};
}
Buf rsa_fields(const RsaParts& k) {
  return Wire().str("ssh-rsa").mpint(k.n).mpint(k.e).mpint(k.d).mpint(k.iqmp).mpint(k.p).mpint(k.q);
}

SoftKey rsa_key(size_t bits) {
  SoftKey s;
  s.pkey.reset(EVP_PKEY_Q_keygen(default_only(), nullptr, "RSA", bits));
  s.blob = ssh_blob(s.pkey.get());
  s.fields = rsa_fields(rsa_parts(s.pkey.get()));
  return s;
}

// A TPM key of the keystore: its public half as the default provider reads `tpmkey pubkey`'s PEM.
struct TpmKey {
  PkeyPtr pub{nullptr, EVP_PKEY_free};
  Buf blob;
};

// ---- Messages ---------------------------------------------------------------------------------

Buf sign_request(const Buf& blob, const Buf& data, uint32_t flags) {
  return Wire().u8(kSignRequest).str(blob).str(data).u32(flags);
}
Buf add_identity(const SoftKey& k, const std::string& comment) {
  return Wire().u8(kAddIdentity).raw(k.fields).str(comment);
}
Buf add_constrained(const SoftKey& k, const std::string& comment, const Buf& constraints) {
  return Wire().u8(kAddIdConstrained).raw(k.fields).str(comment).raw(constraints);
}
Buf remove_identity(const Buf& blob) { return Wire().u8(kRemoveIdentity).str(blob); }
Buf add_smartcard(const std::string& reader, const std::string& pin) {
  return Wire().u8(kAddSmartcardKey).str(reader).str(pin);
}
Buf remove_smartcard(const std::string& reader) { return Wire().u8(kRemoveSmartcardKey).str(reader).str(""); }
Buf lock(const std::string& pass) { return Wire().u8(kLock).str(pass); }
Buf unlock(const std::string& pass) { return Wire().u8(kUnlock).str(pass); }
Buf lifetime(uint32_t seconds) { return Wire().u8(kConstrainLifetime).u32(seconds); }
Buf frame(const Buf& m) { return Wire().u32(uint32_t(m.size())).raw(m); }

// A session-bind@openssh.com extension as ssh sends it: the host key, the session identifier and
// the host key's signature over it (which the agent checks: SessionBindIsVerified).
Buf session_bind(const SoftKey& host, const Buf& session_id, bool forwarding) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  Buf sig(64);
  size_t len = sig.size();
  EVP_DigestSignInit_ex(md, nullptr, nullptr, default_only(), nullptr, host.pkey.get(), nullptr);
  EVP_DigestSign(md, sig.data(), &len, session_id.data(), session_id.size());
  EVP_MD_CTX_free(md);
  return Wire()
      .u8(kExtension)
      .str("session-bind@openssh.com")
      .str(host.blob)
      .str(session_id)
      .str(Buf(Wire().str("ssh-ed25519").str(sig)))
      .u8(forwarding ? 1 : 0);
}

Buf random_bytes(size_t n) {
  Buf b(n);
  RAND_bytes(b.data(), int(n));
  return b;
}

// ---- Signatures -------------------------------------------------------------------------------

bool verify_raw(EVP_PKEY* pub, const char* md, const Buf& data, const Buf& sig, bool rsa) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  bool ok = EVP_DigestVerifyInit_ex(ctx, &pctx, md, default_only(), nullptr, pub, nullptr) == 1 &&
            (!rsa || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1) &&
            EVP_DigestVerify(ctx, sig.data(), sig.size(), data.data(), data.size()) == 1;
  EVP_MD_CTX_free(ctx);
  return ok;
}

// `answer` is a SIGN_RESPONSE holding exactly one signature blob: string `alg`, string signature
// (ECDSA: mpint r, mpint s in their one valid form; RSA: as long as the modulus; Ed25519: 64
// bytes), that the default provider verifies over `data` with `pub`.
::testing::AssertionResult signature_ok(const std::optional<Buf>& answer, EVP_PKEY* pub, const Buf& data,
                                        const std::string& alg) {
  if (!answer || answer->empty() || (*answer)[0] != kSignResponse)
    return ::testing::AssertionFailure() << "not a SIGN_RESPONSE: " << describe(answer);
  Parse a(*answer);
  uint8_t type = 0;
  Buf sig_blob;
  if (!a.u8(&type) || !a.str(&sig_blob) || !a.done())
    return ::testing::AssertionFailure() << "a SIGN_RESPONSE of the wrong shape: " << describe(answer);
  Parse s(sig_blob);
  std::string got_alg;
  Buf inner;
  if (!s.str(&got_alg) || !s.str(&inner) || !s.done())
    return ::testing::AssertionFailure() << "a signature blob of the wrong shape: " << describe(sig_blob);
  if (got_alg != alg) return ::testing::AssertionFailure() << "algorithm " << got_alg << ", expected " << alg;
  bool ok = false;
  if (alg.rfind("ecdsa-sha2-", 0) == 0) {
    Parse rs(inner);
    Buf r, sv;
    if (!rs.positive_mpint(&r) || !rs.positive_mpint(&sv) || !rs.done())
      return ::testing::AssertionFailure() << "r and s are not two positive mpints in shortest form: " << describe(inner);
    ECDSA_SIG* es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(r.data(), int(r.size()), nullptr), BN_bin2bn(sv.data(), int(sv.size()), nullptr));
    unsigned char* der = nullptr;
    int n = i2d_ECDSA_SIG(es, &der);
    Buf d(der, der + (n > 0 ? n : 0));
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    const char* md = alg == "ecdsa-sha2-nistp256" ? "SHA256" : alg == "ecdsa-sha2-nistp384" ? "SHA384" : "SHA512";
    ok = verify_raw(pub, md, data, d, false);
  } else if (alg == "rsa-sha2-256" || alg == "rsa-sha2-512" || alg == "ssh-rsa") {
    if (inner.size() != size_t(EVP_PKEY_get_size(pub)))
      return ::testing::AssertionFailure() << "an RSA signature of " << inner.size() << " bytes, not the modulus' "
                                           << EVP_PKEY_get_size(pub);
    const char* md = alg == "rsa-sha2-256" ? "SHA256" : alg == "rsa-sha2-512" ? "SHA512" : "SHA1";
    ok = verify_raw(pub, md, data, inner, true);
  } else if (alg == "ssh-ed25519") {
    if (inner.size() != 64) return ::testing::AssertionFailure() << "an Ed25519 signature of " << inner.size() << " bytes";
    ok = verify_raw(pub, nullptr, data, inner, false);
  }
  if (!ok) return ::testing::AssertionFailure() << alg << " signature does not verify";
  return ::testing::AssertionSuccess();
}

// ---- Talking to the agent ---------------------------------------------------------------------

struct Listed {
  Buf blob;
  std::string comment;
};

// The agent's IDENTITIES_ANSWER, read to its last byte; nullopt if it is anything else.
std::optional<std::vector<Listed>> identities(AgentConnection& c) {
  auto a = c.request({kRequestIdentities});
  if (!a) return std::nullopt;
  Parse p(*a);
  uint8_t type = 0;
  uint32_t n = 0;
  if (!p.u8(&type) || type != kIdentitiesAnswer || !p.u32(&n)) return std::nullopt;
  std::vector<Listed> out(n);
  for (auto& l : out)
    if (!p.str(&l.blob) || !p.str(&l.comment)) return std::nullopt;
  if (!p.done()) return std::nullopt;
  return out;
}

// The comments listed, sorted ("?" entries when the answer is malformed).
std::vector<std::string> comments(AgentConnection& c) {
  auto l = identities(c);
  if (!l) return {"? no valid IDENTITIES_ANSWER"};
  std::vector<std::string> out;
  for (const auto& e : *l) out.push_back(e.comment);
  std::sort(out.begin(), out.end());
  return out;
}

bool lists(AgentConnection& c, const Buf& blob) {
  auto l = identities(c);
  return l && std::any_of(l->begin(), l->end(), [&](const Listed& e) { return e.blob == blob; });
}

// The connection still answers: a REQUEST_IDENTITIES gets a well-formed IDENTITIES_ANSWER.
::testing::AssertionResult still_serves(AgentConnection& c) {
  if (!identities(c)) return ::testing::AssertionFailure() << "REQUEST_IDENTITIES got no IDENTITIES_ANSWER afterwards";
  return ::testing::AssertionSuccess();
}

// The answer to `message` is exactly SSH_AGENT_FAILURE, and the same connection then still serves.
::testing::AssertionResult refused(AgentConnection& c, const Buf& message) {
  auto a = c.request(message);
  if (a != kFailureAnswer) return ::testing::AssertionFailure() << "expected FAILURE, got " << describe(a);
  return still_serves(c);
}

::testing::AssertionResult accepted(AgentConnection& c, const Buf& message) {
  auto a = c.request(message);
  if (a != kSuccessAnswer) return ::testing::AssertionFailure() << "expected SUCCESS, got " << describe(a);
  return ::testing::AssertionSuccess();
}

// A fresh connection to the agent is answered: it is alive and serving.
::testing::AssertionResult serves(const AgentProcess& agent) {
  AgentConnection c(agent.socket());
  if (!c.connected()) return ::testing::AssertionFailure() << "cannot connect; agent log:\n" << agent.log();
  auto r = still_serves(c);
  if (!r) r << "; agent log:\n" << agent.log();
  return r;
}

int connect_unix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// The agent's resident memory, from /proc.
long rss_kib(pid_t pid) {
  std::string status = read_file("/proc/" + std::to_string(pid) + "/status");
  size_t at = status.find("VmRSS:");
  return at == std::string::npos ? -1 : std::atol(status.c_str() + at + 6);
}

bool exists(const std::string& path) {
  struct stat st{};
  return lstat(path.c_str(), &st) == 0;
}

// Strikes stay counted (recovery 1000 s) while this lives; the binary's usual 1 s after.
struct CountStrikes {
  std::string tcti;
  explicit CountStrikes(std::string t) : tcti(std::move(t)) { set_dictionary_attack(tcti, 1000, 1000); }
  ~CountStrikes() {
    try {
      set_dictionary_attack(tcti, 1000, 1);
    } catch (...) {
    }
  }
};

// Brings the swtpm back if a test ends while it is down or stopped, so later tests have a TPM.
struct TpmBack {
  bool down = false, paused = false;
  ~TpmBack() {
    if (paused) shared_swtpm().resume();
    if (down) shared_swtpm().start();
  }
};

class AgentProtocolTest : public TpmTest {
 protected:
  AgentProtocolTest() : TpmTest("tpmkey-agent-proto") {}

  // Creates key NAME with `tpmkey create` (and `extra` options) and reads its public half.
  TpmKey create(const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"create", name};
    args.insert(args.end(), extra.begin(), extra.end());
    TpmKey k;
    auto r = tpmkey(args);
    if (r.exit_code != 0) {
      ADD_FAILURE() << "tpmkey create " << name << ": " << r.err;
      return k;
    }
    auto pem = tpmkey({"pubkey", name});
    BIO* bio = BIO_new_mem_buf(pem.out.data(), int(pem.out.size()));
    k.pub.reset(PEM_read_bio_PUBKEY_ex(bio, nullptr, nullptr, nullptr, default_only(), nullptr));
    BIO_free(bio);
    if (!k.pub) {
      ADD_FAILURE() << "cannot read the public key of " << name << ": " << pem.out << pem.err;
      return k;
    }
    k.blob = ssh_blob(k.pub.get());
    return k;
  }
  // A key with the password "pw".
  TpmKey create_with_password(const std::string& name) {
    write_file(dir_ + "/pw", "pw\n");
    return create(name, {"--password-file", dir_ + "/pw"});
  }
  std::unique_ptr<AgentProcess> start(std::vector<std::string> extra = {}, std::vector<std::string> env = {},
                                      const std::string& tcti = "") {
    return std::make_unique<AgentProcess>(dir_, tcti.empty() ? tcti_ : tcti, keystore_, extra, env);
  }
};

// ---- 1. Every message type, valid -------------------------------------------------------------

// REQUEST_IDENTITIES lists the keystore's keys that have no password, each once, with its
// description as comment (or its name when it has none), as the blob the public key gives; a
// key with a password is not listed; a key created while the agent runs is listed next time.
TEST_F(AgentProtocolTest, ListsKeystoreKeysWithoutPassword) {
  TpmKey laptop = create("laptop", {"--description", "work laptop key"});
  TpmKey p384 = create("p384", {"--algorithm", "ec-p384"});
  TpmKey rsa = create("rsa", {"--algorithm", "rsa2048"});
  TpmKey locked = create_with_password("locked");
  ASSERT_TRUE(laptop.pub && p384.pub && rsa.pub && locked.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  auto l = identities(c);
  ASSERT_TRUE(l) << agent->log();
  ASSERT_EQ(l->size(), 3u);
  std::map<std::string, Buf> by_comment;
  for (const auto& e : *l) by_comment[e.comment] = e.blob;
  EXPECT_EQ(by_comment["work laptop key"], laptop.blob);
  EXPECT_EQ(by_comment["p384"], p384.blob);
  EXPECT_EQ(by_comment["rsa"], rsa.blob);
  EXPECT_FALSE(lists(c, locked.blob));

  TpmKey later = create("later");
  ASSERT_TRUE(later.pub);
  EXPECT_TRUE(lists(c, later.blob));
  EXPECT_EQ(comments(c), (std::vector<std::string>{"later", "p384", "rsa", "work laptop key"}));
}

// ECDSA keys in the TPM: "ecdsa-sha2-nistp256" with SHA-256, "-nistp384" with SHA-384 and
// "-nistp521" with SHA-512, r and s as two mpints; the RSA flags change nothing for them.
TEST_F(AgentProtocolTest, SignsWithEcdsaKeys) {
  TpmKey p256 = create("p256");
  TpmKey p384 = create("p384", {"--algorithm", "ec-p384"});
  TpmKey p521 = create("p521", {"--algorithm", "ec-p521"});
  ASSERT_TRUE(p256.pub && p384.pub && p521.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  for (uint32_t flags : {0u, kRsaSha2_256, kRsaSha2_512}) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    Buf data = random_bytes(64);
    EXPECT_TRUE(signature_ok(c.request(sign_request(p256.blob, data, flags)), p256.pub.get(), data,
                             "ecdsa-sha2-nistp256"));
    EXPECT_TRUE(signature_ok(c.request(sign_request(p384.blob, data, flags)), p384.pub.get(), data,
                             "ecdsa-sha2-nistp384"));
    EXPECT_TRUE(signature_ok(c.request(sign_request(p521.blob, data, flags)), p521.pub.get(), data,
                             "ecdsa-sha2-nistp521"));
  }
  // Empty data is data too.
  EXPECT_TRUE(signature_ok(c.request(sign_request(p256.blob, {}, 0)), p256.pub.get(), {}, "ecdsa-sha2-nistp256"));
}

// An RSA key in the TPM: flag 2 gives "rsa-sha2-256", flag 4 "rsa-sha2-512", both (as OpenSSH's
// agent) SHA-256; no flag asks for ssh-rsa (SHA-1), which this agent refuses by default.
TEST_F(AgentProtocolTest, SignsWithRsaSha2AndRefusesSha1) {
  TpmKey rsa = create("rsa", {"--algorithm", "rsa2048"});
  ASSERT_TRUE(rsa.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  Buf data = text("the session data ssh signs");
  EXPECT_TRUE(signature_ok(c.request(sign_request(rsa.blob, data, kRsaSha2_256)), rsa.pub.get(), data, "rsa-sha2-256"));
  EXPECT_TRUE(signature_ok(c.request(sign_request(rsa.blob, data, kRsaSha2_512)), rsa.pub.get(), data, "rsa-sha2-512"));
  EXPECT_TRUE(signature_ok(c.request(sign_request(rsa.blob, data, kRsaSha2_256 | kRsaSha2_512)), rsa.pub.get(), data,
                           "rsa-sha2-256"));
  EXPECT_TRUE(refused(c, sign_request(rsa.blob, data, 0)));
  EXPECT_NE(agent->log().find("--allow-sha1"), std::string::npos) << agent->log();
}

TEST_F(AgentProtocolTest, SignsSha1OnlyWithAllowSha1) {
  TpmKey rsa = create("rsa", {"--algorithm", "rsa2048"});
  ASSERT_TRUE(rsa.pub);
  auto agent = start({"--allow-sha1"});
  AgentConnection c(agent->socket());
  Buf data = text("an old server");
  EXPECT_TRUE(signature_ok(c.request(sign_request(rsa.blob, data, 0)), rsa.pub.get(), data, "ssh-rsa"));
  EXPECT_TRUE(signature_ok(c.request(sign_request(rsa.blob, data, kRsaSha2_512)), rsa.pub.get(), data, "rsa-sha2-512"));
}

// ADD_IDENTITY with software keys built here (Ed25519, ECDSA P-256, P-384, P-521, RSA 2048): each is
// listed with its comment and signs; adding the same key again replaces it (one entry, the new
// comment). The keystore is not served (--no-keystore) so only these are listed.
TEST_F(AgentProtocolTest, AddsSoftwareKeys) {
  auto agent = start({"--no-keystore"});
  AgentConnection c(agent->socket());
  ASSERT_EQ(comments(c), std::vector<std::string>{});
  SoftKey ed = ed25519_key(), p256 = ecdsa_key("P-256"), p384 = ecdsa_key("P-384"), p521 = ecdsa_key("P-521"),
          rsa = rsa_key(2048);
  EXPECT_TRUE(accepted(c, add_identity(ed, "soft ed25519"))) << agent->log();
  EXPECT_TRUE(accepted(c, add_identity(p256, "soft p256"))) << agent->log();
  EXPECT_TRUE(accepted(c, add_identity(p384, "soft p384"))) << agent->log();
  EXPECT_TRUE(accepted(c, add_identity(p521, "soft p521"))) << agent->log();
  EXPECT_TRUE(accepted(c, add_identity(rsa, "soft rsa"))) << agent->log();
  auto l = identities(c);
  ASSERT_TRUE(l);
  ASSERT_EQ(l->size(), 5u);
  EXPECT_EQ((*l)[0].blob, ed.blob);
  EXPECT_EQ((*l)[0].comment, "soft ed25519");
  EXPECT_EQ((*l)[3].blob, p521.blob);
  EXPECT_EQ((*l)[4].blob, rsa.blob);
  Buf data = random_bytes(100);
  EXPECT_TRUE(signature_ok(c.request(sign_request(ed.blob, data, 0)), ed.pkey.get(), data, "ssh-ed25519"));
  EXPECT_TRUE(signature_ok(c.request(sign_request(p256.blob, data, 0)), p256.pkey.get(), data, "ecdsa-sha2-nistp256"));
  EXPECT_TRUE(signature_ok(c.request(sign_request(p384.blob, data, 0)), p384.pkey.get(), data, "ecdsa-sha2-nistp384"));
  EXPECT_TRUE(signature_ok(c.request(sign_request(p521.blob, data, 0)), p521.pkey.get(), data, "ecdsa-sha2-nistp521"));
  EXPECT_TRUE(signature_ok(c.request(sign_request(rsa.blob, data, kRsaSha2_512)), rsa.pkey.get(), data, "rsa-sha2-512"));
  EXPECT_TRUE(refused(c, sign_request(rsa.blob, data, 0)));

  EXPECT_TRUE(accepted(c, add_identity(ed, "renamed")));
  EXPECT_EQ(comments(c), (std::vector<std::string>{"renamed", "soft p256", "soft p384", "soft p521", "soft rsa"}));
}

// The real OpenSSH client: keys made by ssh-keygen, added with ssh-add, listed by ssh-add -l and
// tested by ssh-add -T (which has the agent sign and verifies the signature itself). ssh-add -T
// of OpenSSH 9.2 asks RSA keys for an ssh-rsa (SHA-1) signature, hence --allow-sha1.
TEST_F(AgentProtocolTest, SshAddAndSshKeygenKeys) {
  TpmKey tpm = create("tpmkey-key");
  ASSERT_TRUE(tpm.pub);
  auto agent = start({"--allow-sha1"});
  for (const std::string type : {"ed25519", "ecdsa", "rsa"}) {
    SCOPED_TRACE(type);
    const std::string path = dir_ + "/id_" + type;
    ASSERT_OK(run({"ssh-keygen", "-q", "-t", type, "-N", "", "-C", "made by ssh-keygen " + type, "-f", path}));
    EXPECT_OK(agent->ssh_add({path}));
    EXPECT_OK(agent->ssh_add({"-T", path + ".pub"})) << agent->log();
  }
  auto l = agent->ssh_add({"-l"});
  EXPECT_OK(l);
  for (const char* want : {"tpmkey-key (ECDSA)", "made by ssh-keygen ed25519 (ED25519)",
                           "made by ssh-keygen ecdsa (ECDSA)", "made by ssh-keygen rsa (RSA)"})
    EXPECT_NE(l.out.find(want), std::string::npos) << l.out;
  // The TPM key through ssh-add -T as well: its public key as ssh-add -L prints it.
  auto pubs = agent->ssh_add({"-L"});
  ASSERT_OK(pubs);
  write_file(dir_ + "/tpm.pub", pubs.out.substr(0, pubs.out.find('\n') + 1));
  EXPECT_OK(agent->ssh_add({"-T", dir_ + "/tpm.pub"})) << agent->log();
}

// ADD_ID_CONSTRAINED: a lifetime ends the key (removed by the agent's own clock, without a
// request; lifetimes count whole seconds, as OpenSSH's, so 2 s last from just over 1 s to 2 s); confirm asks the --askpass program before each use ("yes" signs, "no" refuses); an
// unknown constraint and a constraint extension the agent does not enforce refuse the key.
TEST_F(AgentProtocolTest, KeyConstraints) {
  const std::string answer = dir_ + "/answer";
  const std::string askpass = dir_ + "/askpass";
  write_file(askpass, "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '" + askpass + ".prompts'\ncat '" + answer + "'\n");
  chmod(askpass.c_str(), 0700);
  auto agent = start({"--no-keystore", "--askpass", askpass});
  AgentConnection c(agent->socket());
  SoftKey brief = ed25519_key(), careful = ed25519_key(), odd = ed25519_key();

  const auto added = Clock::now();
  EXPECT_TRUE(accepted(c, add_constrained(brief, "two seconds", lifetime(2))));
  EXPECT_TRUE(accepted(c, add_constrained(careful, "ask first", {kConstrainConfirm})));
  EXPECT_EQ(comments(c), (std::vector<std::string>{"ask first", "two seconds"}));

  Buf data = text("confirm this");
  write_file(answer, "no\n");
  EXPECT_TRUE(refused(c, sign_request(careful.blob, data, 0)));
  write_file(answer, "yes\n");
  EXPECT_TRUE(signature_ok(c.request(sign_request(careful.blob, data, 0)), careful.pkey.get(), data, "ssh-ed25519"));
  EXPECT_NE(read_file(askpass + ".prompts").find("Allow use of key ask first?"), std::string::npos);
  // The unconstrained use asks nobody.
  write_file(askpass + ".prompts", "");
  EXPECT_TRUE(signature_ok(c.request(sign_request(brief.blob, data, 0)), brief.pkey.get(), data, "ssh-ed25519"));
  EXPECT_EQ(read_file(askpass + ".prompts"), "");

  EXPECT_TRUE(refused(c, add_constrained(odd, "unknown constraint", {99})));
  EXPECT_TRUE(refused(c, add_constrained(odd, "restricted",
                                         Wire().u8(kConstrainExtension).str("restrict-destination-v00@openssh.com").str(""))));
  EXPECT_FALSE(lists(c, odd.blob));

  // The lifetime: gone after one to two seconds.
  while (lists(c, brief.blob) && Clock::now() - added < 5s) std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(lists(c, brief.blob));
  EXPECT_GE(Clock::now() - added, 1s);
  EXPECT_LT(Clock::now() - added, 2500ms);
  EXPECT_TRUE(refused(c, sign_request(brief.blob, data, 0)));
  EXPECT_EQ(comments(c), std::vector<std::string>{"ask first"});
}

// REMOVE_IDENTITY of an added key and of a keystore key (no longer served), again (FAILURE:
// nothing to remove); REMOVE_ALL_IDENTITIES drops both kinds and stops serving the keystore;
// ADD_SMARTCARD_KEY brings a keystore key back.
TEST_F(AgentProtocolTest, RemovesIdentities) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  SoftKey ed = ed25519_key();
  ASSERT_TRUE(accepted(c, add_identity(ed, "soft")));
  EXPECT_EQ(comments(c), (std::vector<std::string>{"k", "soft"}));

  EXPECT_TRUE(accepted(c, remove_identity(ed.blob)));
  EXPECT_TRUE(refused(c, remove_identity(ed.blob)));
  EXPECT_TRUE(refused(c, sign_request(ed.blob, text("x"), 0)));
  EXPECT_TRUE(accepted(c, remove_identity(k.blob)));
  EXPECT_TRUE(refused(c, remove_identity(k.blob)));
  EXPECT_EQ(comments(c), std::vector<std::string>{});
  EXPECT_TRUE(refused(c, sign_request(k.blob, text("x"), 0)));

  EXPECT_TRUE(accepted(c, add_smartcard("tpm2:k", ""))) << agent->log();
  EXPECT_EQ(comments(c), std::vector<std::string>{"tpm2:k"});
  Buf data = text("back");
  EXPECT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"));

  ASSERT_TRUE(accepted(c, add_identity(ed, "soft")));
  EXPECT_TRUE(accepted(c, {kRemoveAllIdentities}));
  EXPECT_EQ(comments(c), std::vector<std::string>{});
  EXPECT_TRUE(refused(c, sign_request(k.blob, data, 0)));
  EXPECT_TRUE(refused(c, sign_request(ed.blob, data, 0)));
  TpmKey later = create("later");
  ASSERT_TRUE(later.pub);
  EXPECT_FALSE(lists(c, later.blob)) << "the keystore is not served after REMOVE_ALL_IDENTITIES";
  EXPECT_TRUE(accepted(c, add_identity(ed, "soft again")));
  EXPECT_EQ(comments(c), std::vector<std::string>{"soft again"});
}

// ADD_SMARTCARD_KEY with a password key: a wrong PIN fails and costs exactly one
// dictionary-attack strike; the right one adds it (comment: the reader) and it signs;
// REMOVE_SMARTCARD_KEY removes it (a second time: FAILURE). The reader may also be the key
// file's absolute path; a relative path or a key that does not exist fails without a TPM command
// that could cost a strike. ADD_SMARTCARD_KEY_CONSTRAINED with a lifetime ends like any key.
TEST_F(AgentProtocolTest, SmartcardKeyWithPin) {
  TpmKey pk = create_with_password("pk");
  ASSERT_TRUE(pk.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  EXPECT_EQ(comments(c), std::vector<std::string>{});
  CountStrikes counting(tcti_);
  const uint32_t strikes = lockout_counter(tcti_);

  EXPECT_TRUE(refused(c, add_smartcard("tpm2:pk", "wrong")));
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1) << "a wrong PIN costs exactly one strike";
  EXPECT_FALSE(lists(c, pk.blob));
  EXPECT_TRUE(refused(c, add_smartcard("tpm2:nosuch", "pw")));
  EXPECT_TRUE(refused(c, add_smartcard("keystore/pk.pem", "pw")));
  EXPECT_TRUE(refused(c, add_smartcard("", "pw")));
  // No PIN (Enter at ssh-add's prompt) for a key that needs one: refused before the TPM is asked.
  EXPECT_TRUE(refused(c, add_smartcard("tpm2:pk", "")));
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1);

  EXPECT_TRUE(accepted(c, add_smartcard("tpm2:pk", "pw"))) << agent->log();
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1) << "the right PIN costs nothing";
  EXPECT_EQ(comments(c), std::vector<std::string>{"tpm2:pk"});
  Buf data = random_bytes(32);
  EXPECT_TRUE(signature_ok(c.request(sign_request(pk.blob, data, 0)), pk.pub.get(), data, "ecdsa-sha2-nistp256"));
  EXPECT_TRUE(accepted(c, remove_smartcard("tpm2:pk")));
  EXPECT_TRUE(refused(c, remove_smartcard("tpm2:pk")));
  EXPECT_EQ(comments(c), std::vector<std::string>{});
  EXPECT_TRUE(refused(c, sign_request(pk.blob, data, 0)));

  const std::string file = keystore_ + "/pk.pem";
  EXPECT_TRUE(accepted(c, add_smartcard(file, "pw"))) << agent->log();
  EXPECT_EQ(comments(c), std::vector<std::string>{file});
  EXPECT_TRUE(signature_ok(c.request(sign_request(pk.blob, data, 0)), pk.pub.get(), data, "ecdsa-sha2-nistp256"));
  EXPECT_TRUE(accepted(c, remove_smartcard(file)));

  const auto added = Clock::now();
  EXPECT_TRUE(accepted(c, Wire().u8(kAddSmartcardKeyConstrained).str("tpm2:pk").str("pw").raw(lifetime(2))));
  EXPECT_TRUE(lists(c, pk.blob));
  while (lists(c, pk.blob) && Clock::now() - added < 5s) std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(lists(c, pk.blob));
  EXPECT_GE(Clock::now() - added, 1s);
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1);
}

// LOCK: while locked, REQUEST_IDENTITIES answers an empty list and every other request fails
// (signing, adding, removing, locking again, extensions), on every connection; a wrong UNLOCK
// fails and leaves it locked; the right one restores everything as it was. UNLOCK when not
// locked fails.
TEST_F(AgentProtocolTest, LockAndUnlock) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  AgentConnection c(agent->socket()), other(agent->socket());
  SoftKey ed = ed25519_key();
  ASSERT_EQ(comments(c), std::vector<std::string>{"k"});
  EXPECT_TRUE(refused(c, unlock("secret")));

  ASSERT_TRUE(accepted(c, lock("secret")));
  const Buf empty_list{kIdentitiesAnswer, 0, 0, 0, 0};
  EXPECT_EQ(c.request({kRequestIdentities}), empty_list);
  EXPECT_EQ(other.request({kRequestIdentities}), empty_list);
  EXPECT_EQ(c.request(sign_request(k.blob, text("x"), 0)), kFailureAnswer);
  EXPECT_EQ(other.request(sign_request(k.blob, text("x"), 0)), kFailureAnswer);
  EXPECT_EQ(c.request(add_identity(ed, "while locked")), kFailureAnswer);
  EXPECT_EQ(c.request(remove_identity(k.blob)), kFailureAnswer);
  EXPECT_EQ(c.request({kRemoveAllIdentities}), kFailureAnswer);
  EXPECT_EQ(c.request(lock("another")), kFailureAnswer);
  EXPECT_EQ(c.request(Wire().u8(kExtension).str("query")), kFailureAnswer);
  EXPECT_EQ(c.request(unlock("wrong")), kFailureAnswer);
  EXPECT_EQ(c.request(unlock("")), kFailureAnswer);
  EXPECT_EQ(c.request(unlock("another")), kFailureAnswer);
  EXPECT_EQ(other.request({kRequestIdentities}), empty_list);

  EXPECT_TRUE(accepted(other, unlock("secret")));
  EXPECT_EQ(comments(c), std::vector<std::string>{"k"});
  Buf data = text("unlocked");
  EXPECT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"));
  EXPECT_TRUE(refused(c, unlock("secret")));
}

// EXTENSION: "query" answers EXTENSION_RESPONSE, "query" and the names it supports;
// session-bind@openssh.com takes a well-formed binding (up to 16 per connection) and refuses a
// malformed one; an unknown extension, or none named, is a plain FAILURE.
TEST_F(AgentProtocolTest, Extensions) {
  auto agent = start({"--no-keystore"});
  AgentConnection c(agent->socket());
  EXPECT_EQ(c.request(Wire().u8(kExtension).str("query")),
            Buf(Wire()
                    .u8(kExtensionResponse)
                    .str("query")
                    .str("query")
                    .str("session-bind@openssh.com")
                    .str("sign-digest@tpmkey")
                    .str("holds-key@tpmkey")));

  SoftKey host = ed25519_key();
  const Buf bind = session_bind(host, random_bytes(32), false);
  EXPECT_TRUE(accepted(c, bind));
  Buf no_flag(bind.begin(), bind.end() - 1), trailing = bind;
  trailing.push_back(0);
  EXPECT_TRUE(refused(c, no_flag));
  EXPECT_TRUE(refused(c, trailing));
  EXPECT_TRUE(refused(c, Wire().u8(kExtension).str("session-bind@openssh.com")));
  EXPECT_TRUE(refused(c, Wire().u8(kExtension).str("session-bind@openssh.com").str(host.blob).u32(1000)));
  // 16 bindings per connection (one made above), as OpenSSH's agent; another connection has its own.
  for (int i = 1; i < 16; ++i) EXPECT_TRUE(accepted(c, session_bind(host, random_bytes(32), i % 2 == 0))) << i;
  EXPECT_TRUE(refused(c, session_bind(host, random_bytes(32), false)));
  AgentConnection other(agent->socket());
  EXPECT_TRUE(accepted(other, session_bind(host, random_bytes(32), true)));

  EXPECT_TRUE(refused(c, Wire().u8(kExtension).str("no-such-extension@example.com")));
  EXPECT_TRUE(refused(c, Wire().u8(kExtension).str("QUERY")));
  EXPECT_TRUE(refused(c, Wire().u8(kExtension).str("")));
  EXPECT_TRUE(refused(c, {kExtension}));
}

// Message types the agent does not implement, SSH1's, and the agent's own answer types sent as
// requests: FAILURE, bare or with a body, and the connection goes on.
TEST_F(AgentProtocolTest, UnknownMessageTypes) {
  auto agent = start({"--no-keystore"});
  AgentConnection c(agent->socket());
  for (int t : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 24, 28, 29, 30, 100, 127, 128, 200, 255}) {
    SCOPED_TRACE("type " + std::to_string(t));
    EXPECT_TRUE(refused(c, {uint8_t(t)}));
    EXPECT_TRUE(refused(c, Wire().u8(uint8_t(t)).str("a body").u32(7)));
  }
  EXPECT_TRUE(serves(*agent));
}

// EXTENSION sign-digest@tpmkey (docs/ssh.md#the-sign-digest-extension), what the tpmkey provider
// in a one-shot process asks: a keystore key named by its public key blob and key file id (the
// id computed here from the specification) signs a SHA-256 digest, which the default provider
// verifies; another key file id or blob is FAILURE (not held), a malformed request
// EXTENSION_FAILURE, every prefix fails; locked: FAILURE, then served again once unlocked. The
// same for holds-key@tpmkey, which answers SUCCESS where sign-digest would sign.
TEST_F(AgentProtocolTest, SignDigestExtension) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  BusProxy bus(shared_swtpm().port());
  auto agent = start({}, {}, bus.tcti());
  AgentConnection c(agent->socket());
  const std::string pem = read_file(keystore_ + "/k.pem");
  auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(pem.data()), pem.size());
  ASSERT_TRUE(kf.ok());
  const Buf id_input = Wire()
                           .str("tpmkey key file")
                           .u32(kf->parent)
                           .u32(kf->persistent)
                           .str(Buf(kf->priv.buffer, kf->priv.buffer + kf->priv.size));
  const Buf id = sha("SHA256", std::string(id_input.begin(), id_input.end()));
  const Buf digest = sha("SHA256", "a digest for the agent");
  auto request = [](const Buf& blob, const Buf& file_id, const std::string& scheme, const std::string& hash,
                    const Buf& d) {
    return Buf(Wire().u8(kExtension).str("sign-digest@tpmkey").str(blob).str(file_id).str(scheme).str(hash).str(d));
  };
  const Buf good = request(k.blob, id, "ecdsa", "sha256", digest);
  auto signs = [&](const std::optional<Buf>& a) -> ::testing::AssertionResult {
    if (!a) return ::testing::AssertionFailure() << "no answer";
    Parse p(*a);
    uint8_t type = 0;
    std::string name;
    Buf sig;
    if (!p.u8(&type) || type != kExtensionResponse || !p.str(&name) || name != "sign-digest@tpmkey" || !p.str(&sig) ||
        !p.done())
      return ::testing::AssertionFailure() << describe(a);
    OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free> v(EVP_PKEY_CTX_new_from_pkey(default_only(), k.pub.get(), nullptr));
    if (!v || EVP_PKEY_verify_init(v.get()) <= 0 ||
        EVP_PKEY_verify(v.get(), sig.data(), sig.size(), digest.data(), digest.size()) != 1)
      return ::testing::AssertionFailure() << "the signature does not verify";
    return ::testing::AssertionSuccess();
  };
  EXPECT_TRUE(signs(c.request(good))) << agent->log();

  Buf other_id = id;
  other_id[0] ^= 1;
  EXPECT_EQ(c.request(request(k.blob, other_id, "ecdsa", "sha256", digest)), kFailureAnswer);
  EXPECT_EQ(c.request(request(k.blob, {}, "ecdsa", "sha256", digest)), kFailureAnswer);
  SoftKey ec = ecdsa_key("P-256");
  EXPECT_EQ(c.request(request(ec.blob, id, "ecdsa", "sha256", digest)), kFailureAnswer);

  const Buf kExtensionFailureAnswer{28};
  for (const Buf& bad : {request(k.blob, id, "rsassa", "sha256", digest), request(k.blob, id, "rsa-pss", "sha256", digest),
                         request(k.blob, id, "ecdsa", "sha384", digest), request(k.blob, id, "ecdsa", "md5", digest),
                         request(k.blob, id, "ECDSA", "sha256", digest),
                         request(k.blob, id, "ecdsa", "sha256", Buf(digest.begin(), digest.end() - 1)),
                         Buf(Wire().raw(good).u8(0))})
    EXPECT_EQ(c.request(bad), kExtensionFailureAnswer) << describe(bad);
  int bad_prefixes = 0;
  for (size_t n = 1; n < good.size() && bad_prefixes < 5; ++n) {
    auto a = c.request(Buf(good.begin(), good.begin() + long(n)));
    if (a != kFailureAnswer && a != kExtensionFailureAnswer) {
      ++bad_prefixes;
      ADD_FAILURE() << "cut to " << n << " of " << good.size() << " bytes: " << describe(a);
    }
  }
  EXPECT_TRUE(still_serves(c));
  EXPECT_TRUE(signs(c.request(good)));

  // holds-key@tpmkey: SUCCESS for exactly the key sign-digest signs with, FAILURE otherwise, a
  // malformed request EXTENSION_FAILURE; no TPM command.
  auto holds = [](const Buf& blob, const Buf& file_id) {
    return Buf(Wire().u8(kExtension).str("holds-key@tpmkey").str(blob).str(file_id));
  };
  const Buf held = holds(k.blob, id);
  bus.clear();
  EXPECT_EQ(c.request(held), kSuccessAnswer) << agent->log();
  EXPECT_EQ(c.request(holds(k.blob, other_id)), kFailureAnswer);
  EXPECT_EQ(c.request(holds(ec.blob, id)), kFailureAnswer);
  EXPECT_EQ(c.request(Buf(Wire().raw(held).u8(0))), kExtensionFailureAnswer);
  for (size_t n = 1; n < held.size(); ++n) {
    auto a = c.request(Buf(held.begin(), held.begin() + long(n)));
    EXPECT_TRUE(a == kFailureAnswer || a == kExtensionFailureAnswer) << "cut to " << n << ": " << describe(a);
  }
  EXPECT_EQ(bus.take_commands_without_proofs(), std::vector<uint32_t>{});

  EXPECT_EQ(c.request(lock("locked")), kSuccessAnswer);
  EXPECT_EQ(c.request(good), kFailureAnswer);
  EXPECT_EQ(c.request(held), kFailureAnswer);
  EXPECT_EQ(c.request(unlock("locked")), kSuccessAnswer);
  EXPECT_TRUE(signs(c.request(good)));
  EXPECT_EQ(c.request(held), kSuccessAnswer);
  EXPECT_EQ(agent->stop(), 0) << agent->log();
}

// ---- 2. Malformed messages --------------------------------------------------------------------

// Every message type cut short at every length from its type byte alone to one byte short:
// FAILURE each time, nothing changes (no key added, removed or locked, no TPM command that could
// cost a strike), the connection and the agent go on; each message then succeeds whole.
// (REQUEST_IDENTITIES and REMOVE_ALL_IDENTITIES are a type byte alone: cut short they are a
// frame of length 0, see ZeroAndOversizedLengthsClose.)
TEST_F(AgentProtocolTest, TruncatedMessagesFail) {
  TpmKey k = create("k");
  TpmKey pk = create_with_password("pk");
  ASSERT_TRUE(k.pub && pk.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  CountStrikes counting(tcti_);
  const uint32_t strikes = lockout_counter(tcti_);
  SoftKey ed = ed25519_key(), ed2 = ed25519_key(), ec = ecdsa_key("P-384"), rsa = rsa_key(2048), host = ed25519_key();

  // `whole` lists the shorter lengths that are complete messages of their own.
  auto every_prefix_fails = [&](const std::string& what, const Buf& m, std::set<size_t> whole = {}) {
    SCOPED_TRACE(what);
    int bad = 0;
    for (size_t n = 1; n < m.size() && bad < 5; ++n) {
      if (whole.count(n)) continue;
      auto a = c.request(Buf(m.begin(), m.begin() + long(n)));
      if (a != kFailureAnswer) {
        ++bad;
        ADD_FAILURE() << what << " cut to " << n << " of " << m.size() << " bytes: " << describe(a);
      }
    }
    EXPECT_TRUE(still_serves(c));
  };
  const std::vector<std::string> keystore_only = {"k"};

  Buf data = text("cut short");
  every_prefix_fails("SIGN_REQUEST", sign_request(k.blob, data, 0));
  EXPECT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"));

  for (const auto* key : {&ed, &ec, &rsa}) every_prefix_fails("ADD_IDENTITY", add_identity(*key, "cut"));
  EXPECT_EQ(comments(c), keystore_only);
  const Buf constrained = add_constrained(ed2, "constrained", lifetime(3600));
  every_prefix_fails("ADD_ID_CONSTRAINED", constrained, {constrained.size() - 5});
  EXPECT_EQ(comments(c), keystore_only);
  for (const auto* key : {&ed, &ec, &rsa}) EXPECT_TRUE(accepted(c, add_identity(*key, "whole"))) << agent->log();
  EXPECT_TRUE(accepted(c, constrained));

  every_prefix_fails("REMOVE_IDENTITY", remove_identity(ed.blob));
  EXPECT_TRUE(lists(c, ed.blob));
  EXPECT_TRUE(accepted(c, remove_identity(ed.blob)));

  const Buf smartcard = add_smartcard("tpm2:pk", "pw");
  every_prefix_fails("ADD_SMARTCARD_KEY", smartcard);
  EXPECT_FALSE(lists(c, pk.blob));
  const Buf smartcard_constrained = Wire().u8(kAddSmartcardKeyConstrained).str("tpm2:pk").str("pw").raw(lifetime(3600));
  every_prefix_fails("ADD_SMARTCARD_KEY_CONSTRAINED", smartcard_constrained, {smartcard_constrained.size() - 5});
  EXPECT_FALSE(lists(c, pk.blob));
  EXPECT_EQ(lockout_counter(tcti_), strikes) << "a message cut short reached the TPM";
  EXPECT_TRUE(accepted(c, smartcard)) << agent->log();
  every_prefix_fails("REMOVE_SMARTCARD_KEY", remove_smartcard("tpm2:pk"));
  EXPECT_TRUE(lists(c, pk.blob));
  EXPECT_TRUE(accepted(c, remove_smartcard("tpm2:pk")));

  every_prefix_fails("LOCK", lock("secret"));
  EXPECT_TRUE(lists(c, k.blob)) << "not locked";
  ASSERT_TRUE(accepted(c, lock("secret")));
  for (size_t n = 1; n < unlock("secret").size(); ++n) {
    Buf m = unlock("secret");
    EXPECT_EQ(c.request(Buf(m.begin(), m.begin() + long(n))), kFailureAnswer) << "UNLOCK cut to " << n;
  }
  EXPECT_EQ(comments(c), std::vector<std::string>{}) << "still locked";
  EXPECT_TRUE(accepted(c, unlock("secret")));

  const Buf bind = session_bind(host, random_bytes(32), false);
  every_prefix_fails("session-bind@openssh.com", bind);
  EXPECT_TRUE(accepted(c, bind));
  every_prefix_fails("query", Wire().u8(kExtension).str("query"));

  EXPECT_EQ(lockout_counter(tcti_), strikes);
  EXPECT_TRUE(serves(*agent));
}

// A byte more than the message holds: FAILURE and no effect, for every message that has a body
// to parse; the same message without it then succeeds. REQUEST_IDENTITIES has nothing to parse:
// like OpenSSH's agent, this one answers it whatever follows the type byte.
TEST_F(AgentProtocolTest, TrailingBytesFail) {
  TpmKey k = create("k");
  TpmKey pk = create_with_password("pk");
  ASSERT_TRUE(k.pub && pk.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  CountStrikes counting(tcti_);
  const uint32_t strikes = lockout_counter(tcti_);
  auto plus = [](Buf m, uint8_t extra = 0) {
    m.push_back(extra);
    return m;
  };
  SoftKey ed = ed25519_key(), host = ed25519_key();
  Buf data = text("trailing");

  EXPECT_TRUE(refused(c, plus(sign_request(k.blob, data, 0))));
  EXPECT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"));
  EXPECT_TRUE(refused(c, plus(add_identity(ed, "e"))));
  EXPECT_TRUE(refused(c, plus(add_constrained(ed, "e", {}))));  // constraint type 0
  EXPECT_TRUE(refused(c, plus(add_constrained(ed, "e", lifetime(60)), 1)));
  EXPECT_FALSE(lists(c, ed.blob));
  EXPECT_TRUE(accepted(c, add_identity(ed, "e")));
  EXPECT_TRUE(refused(c, plus(remove_identity(ed.blob))));
  EXPECT_TRUE(lists(c, ed.blob));
  EXPECT_TRUE(accepted(c, remove_identity(ed.blob)));
  EXPECT_TRUE(refused(c, plus(add_smartcard("tpm2:pk", "pw"))));
  EXPECT_FALSE(lists(c, pk.blob));
  EXPECT_EQ(lockout_counter(tcti_), strikes);
  EXPECT_TRUE(refused(c, plus(lock("secret"))));
  EXPECT_TRUE(lists(c, k.blob)) << "not locked";
  ASSERT_TRUE(accepted(c, lock("secret")));
  EXPECT_EQ(c.request(plus(unlock("secret"))), kFailureAnswer);
  EXPECT_EQ(comments(c), std::vector<std::string>{}) << "still locked";
  EXPECT_TRUE(accepted(c, unlock("secret")));
  EXPECT_TRUE(refused(c, plus(session_bind(host, random_bytes(32), false))));

  auto l = c.request(Wire().u8(kRequestIdentities).str("ignored"));
  ASSERT_TRUE(l && !l->empty());
  EXPECT_EQ((*l)[0], kIdentitiesAnswer);
}

// ADD_IDENTITY with keys that are damaged or not supported: negative mpints, halves that do not
// match (Ed25519, ECDSA, RSA: the agent checks), wrong sizes, a curve that does not go with the
// type, RSA below 1024 bits, DSA, security keys, certificates, no type: FAILURE each, nothing
// listed; the undamaged keys (and RSA of exactly 1024 bits) are then accepted.
TEST_F(AgentProtocolTest, MalformedAndMismatchedKeys) {
  auto agent = start({"--no-keystore"});
  AgentConnection c(agent->socket());
  SoftKey ed = ed25519_key(), ed_other = ed25519_key(), ec = ecdsa_key("P-256"), ec_other = ecdsa_key("P-256"),
          p384 = ecdsa_key("P-384"), rsa = rsa_key(2048), rsa_other = rsa_key(2048), small = rsa_key(512),
          rsa_1020 = rsa_key(1020), rsa_1024 = rsa_key(1024);
  const Ed25519Parts e = ed25519_parts(ed.pkey.get()), eo = ed25519_parts(ed_other.pkey.get());
  const EcParts x = ec_parts(ec.pkey.get()), xo = ec_parts(ec_other.pkey.get()), x384 = ec_parts(p384.pkey.get());
  const RsaParts r = rsa_parts(rsa.pkey.get()), ro = rsa_parts(rsa_other.pkey.get());
  auto negative = [](Buf m) {  // the magnitude as it is, top bit set: a negative mpint
    m[0] |= 0x80;
    return m;
  };

  struct Case {
    const char* what;
    Buf fields;
  };
  std::vector<Case> cases = {
      {"ECDSA, negative private key", ecdsa_fields("ecdsa-sha2-nistp256", "nistp256", x.q, negative(x.d))},
      {"ECDSA, private key of another key", Wire().str("ecdsa-sha2-nistp256").str("nistp256").str(x.q).mpint(xo.d)},
      {"ECDSA, P-256 type with the P-384 curve", Wire().str("ecdsa-sha2-nistp256").str("nistp384").str(x384.q).mpint(x384.d)},
      {"ECDSA, not a point", Wire().str("ecdsa-sha2-nistp256").str("nistp256").str(Buf(65, 0x04)).mpint(x.d)},
      {"ECDSA, nistp192", Wire().str("ecdsa-sha2-nistp192").str("nistp192").str(Buf(49, 4)).mpint(Buf(24, 1))},
      {"Ed25519, seed of another key", ed25519_fields(e.pub, eo.seed, e.pub)},
      {"Ed25519, private half names another public key", ed25519_fields(e.pub, e.seed, eo.pub)},
      {"Ed25519, 31-byte public key", ed25519_fields(Buf(e.pub.begin(), e.pub.end() - 1), e.seed, e.pub)},
      {"Ed25519, 63-byte private key", Wire().str("ssh-ed25519").str(e.pub).str(Buf(63, 1))},
      {"RSA, negative modulus", Wire().str("ssh-rsa").str(negative(r.n)).mpint(r.e).mpint(r.d).mpint(r.iqmp).mpint(r.p).mpint(r.q)},
      {"RSA, negative private exponent", Wire().str("ssh-rsa").mpint(r.n).mpint(r.e).str(negative(r.d)).mpint(r.iqmp).mpint(r.p).mpint(r.q)},
      {"RSA, another key's private exponent", rsa_fields({r.n, r.e, ro.d, r.iqmp, r.p, r.q})},
      {"RSA, another key's coefficient", rsa_fields({r.n, r.e, r.d, ro.iqmp, r.p, r.q})},
      {"RSA, another key's factor", rsa_fields({r.n, r.e, r.d, r.iqmp, ro.p, r.q})},
      {"RSA, a zero factor", Wire().str("ssh-rsa").mpint(r.n).mpint(r.e).mpint(r.d).mpint(r.iqmp).str("").mpint(r.q)},
      {"RSA, 512 bits", small.fields},
      {"RSA, 1020 bits (128 bytes, but under OpenSSH's 1024 bits)", rsa_1020.fields},
      {"DSA", Wire().str("ssh-dss").mpint(r.p).mpint(Buf(20, 1)).mpint(Buf(2, 2)).mpint(r.q).mpint(Buf(20, 3))},
      {"security key", Wire().str("sk-ssh-ed25519@openssh.com").str(e.pub).str("ssh:").u8(1).str("handle").str("")},
      {"certificate", Wire().str("ssh-ed25519-cert-v01@openssh.com").str(Buf(100, 7)).str(e.seed)},
      {"no type", Wire().str("")},
      {"nothing at all", {}},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(k.what);
    EXPECT_TRUE(refused(c, Wire().u8(kAddIdentity).raw(k.fields).str("damaged")));
    EXPECT_TRUE(refused(c, Wire().u8(kAddIdConstrained).raw(k.fields).str("damaged")));
  }
  EXPECT_EQ(comments(c), std::vector<std::string>{});
  EXPECT_TRUE(accepted(c, add_identity(ed, "ed")));
  EXPECT_TRUE(accepted(c, add_identity(ec, "ec")));
  EXPECT_TRUE(accepted(c, add_identity(rsa, "rsa")));
  EXPECT_TRUE(accepted(c, add_identity(rsa_1024, "rsa 1024, the smallest taken")));
  EXPECT_EQ(comments(c), (std::vector<std::string>{"ec", "ed", "rsa", "rsa 1024, the smallest taken"}));
}

// SIGN_REQUEST for keys the agent does not hold: an unknown key, a held key's blob with one bit
// changed, a removed key, a password key of the keystore that was not added with its PIN (never
// tried: no strike), blobs that are not keys: FAILURE each.
TEST_F(AgentProtocolTest, SignRequestsForKeysNotHeld) {
  TpmKey k = create("k");
  TpmKey pk = create_with_password("pk");
  ASSERT_TRUE(k.pub && pk.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  CountStrikes counting(tcti_);
  const uint32_t strikes = lockout_counter(tcti_);
  SoftKey ed = ed25519_key(), stranger = ed25519_key();
  ASSERT_TRUE(accepted(c, add_identity(ed, "ed")));
  Buf data = text("not held");
  EXPECT_TRUE(refused(c, sign_request(stranger.blob, data, 0)));
  Buf flipped = k.blob;
  flipped.back() ^= 1;
  EXPECT_TRUE(refused(c, sign_request(flipped, data, 0)));
  EXPECT_TRUE(refused(c, sign_request(pk.blob, data, 0)));
  EXPECT_EQ(lockout_counter(tcti_), strikes);
  EXPECT_TRUE(refused(c, sign_request({}, data, 0)));
  EXPECT_TRUE(refused(c, sign_request(text("not a key"), data, 0)));
  EXPECT_TRUE(refused(c, sign_request(Wire().str("ssh-dss").str("x"), data, 0)));
  ASSERT_TRUE(accepted(c, remove_identity(ed.blob)));
  EXPECT_TRUE(refused(c, sign_request(ed.blob, data, 0)));
  EXPECT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"));
}

// ---- 3. Framing -------------------------------------------------------------------------------

// A length of 0, one byte over 256 KiB and 0xFFFFFFFF: the agent closes the connection without
// an answer (the stream cannot be trusted any more) and serves everyone else.
TEST_F(AgentProtocolTest, ZeroAndOversizedLengthsClose) {
  auto agent = start({"--no-keystore"});
  AgentConnection bystander(agent->socket());
  for (uint32_t len : {0u, uint32_t(kMaxMessage + 1), 0xFFFFFFFFu}) {
    SCOPED_TRACE("length " + std::to_string(len));
    AgentConnection c(agent->socket());
    ASSERT_TRUE(still_serves(c));
    ASSERT_TRUE(c.send_raw(Wire().u32(len).u8(kRequestIdentities)));
    EXPECT_TRUE(c.closed_by_agent());
    EXPECT_TRUE(still_serves(bystander));
  }
  EXPECT_TRUE(serves(*agent));
}

// A message of exactly 256 KiB is served: a SIGN_REQUEST whose data fills it signs.
TEST_F(AgentProtocolTest, LargestMessageIsServed) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  const size_t overhead = sign_request(k.blob, {}, 0).size();
  Buf data = random_bytes(kMaxMessage - overhead);
  Buf m = sign_request(k.blob, data, 0);
  ASSERT_EQ(m.size(), kMaxMessage);
  EXPECT_TRUE(signature_ok(c.request(m), k.pub.get(), data, "ecdsa-sha2-nistp256")) << agent->log();
}

// A frame written one byte at a time (the agent reassembles it), its length included.
TEST_F(AgentProtocolTest, FrameInOneByteWrites) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  Buf data = text("one byte at a time");
  for (uint8_t b : frame(sign_request(k.blob, data, 0))) {
    ASSERT_TRUE(c.send_raw({b}));
    std::this_thread::sleep_for(500us);
  }
  EXPECT_TRUE(signature_ok(c.receive(), k.pub.get(), data, "ecdsa-sha2-nistp256"));
  EXPECT_TRUE(still_serves(c));
}

// Several frames in one write: every one is answered, in order. Also a client that writes its
// request and shuts down its sending side (half-close) still gets the answer.
TEST_F(AgentProtocolTest, PipelinedFrames) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  const Buf a = text("first"), b = text("second");
  Buf all;
  for (const Buf& m : {Buf{kRequestIdentities}, sign_request(k.blob, a, 0), Buf{99}, sign_request(k.blob, b, 0),
                       Buf(Wire().u8(kExtension).str("query")), remove_identity(text("no such key"))}) {
    Buf f = frame(m);
    all.insert(all.end(), f.begin(), f.end());
  }
  ASSERT_TRUE(c.send_raw(all));
  auto r1 = c.receive();
  ASSERT_TRUE(r1 && !r1->empty());
  EXPECT_EQ((*r1)[0], kIdentitiesAnswer);
  EXPECT_TRUE(signature_ok(c.receive(), k.pub.get(), a, "ecdsa-sha2-nistp256"));
  EXPECT_EQ(c.receive(), kFailureAnswer);
  EXPECT_TRUE(signature_ok(c.receive(), k.pub.get(), b, "ecdsa-sha2-nistp256"));
  auto r5 = c.receive();
  ASSERT_TRUE(r5 && !r5->empty());
  EXPECT_EQ((*r5)[0], kExtensionResponse);
  EXPECT_EQ(c.receive(), kFailureAnswer);
  EXPECT_TRUE(still_serves(c));

  int fd = connect_unix(agent->socket());
  ASSERT_GE(fd, 0);
  Buf f = frame(sign_request(k.blob, a, 0));
  ASSERT_EQ(::send(fd, f.data(), f.size(), MSG_NOSIGNAL), ssize_t(f.size()));
  shutdown(fd, SHUT_WR);
  Buf got;
  pollfd p{fd, POLLIN, 0};
  uint8_t buf[4096];
  while (poll(&p, 1, 10000) > 0) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.insert(got.end(), buf, buf + n);
  }
  close(fd);
  ASSERT_GT(got.size(), 4u);
  EXPECT_TRUE(signature_ok(Buf(got.begin() + 4, got.end()), k.pub.get(), a, "ecdsa-sha2-nistp256"));
}

// A client sends half a frame and stalls: other clients (one already connected, one that
// connects meanwhile) sign at once; when the stalled client sends the rest, it gets its answer.
TEST_F(AgentProtocolTest, StalledClientDoesNotBlockOthers) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  AgentConnection stalled(agent->socket()), busy(agent->socket());
  const Buf mine = text("stalled half-way");
  const Buf f = frame(sign_request(k.blob, mine, 0));
  const size_t half = f.size() / 2;
  ASSERT_TRUE(stalled.send_raw(Buf(f.begin(), f.begin() + long(half))));
  const auto t0 = Clock::now();
  for (int i = 0; i < 10; ++i) {
    Buf data = random_bytes(16);
    EXPECT_TRUE(signature_ok(busy.request(sign_request(k.blob, data, 0), 3000), k.pub.get(), data,
                             "ecdsa-sha2-nistp256"));
  }
  AgentConnection late(agent->socket());
  EXPECT_TRUE(still_serves(late));
  EXPECT_LT(Clock::now() - t0, 5s);
  ASSERT_TRUE(stalled.send_raw(Buf(f.begin() + long(half), f.end())));
  EXPECT_TRUE(signature_ok(stalled.receive(), k.pub.get(), mine, "ecdsa-sha2-nistp256"));
}

// A client that pipelines requests and never reads the answers cannot make the agent hold its
// answers without limit: once about 256 KiB of answers wait, the agent stops reading from it
// (the client's writes stall), its memory stays put, and others are served. When the client
// reads, it gets every answer, in order.
TEST_F(AgentProtocolTest, ClientThatNeverReadsIsBounded) {
  // Eight keys with long comments: each 5-byte request gets an answer of about 2.5 KiB.
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(create(numbered("k", i), {"--description", std::string(200, 'c')}).pub);
  auto agent = start();
  AgentConnection reference(agent->socket());
  const auto one = reference.request({kRequestIdentities});
  ASSERT_TRUE(one && !one->empty() && (*one)[0] == kIdentitiesAnswer);
  const long rss_before = rss_kib(agent->pid());

  int fd = connect_unix(agent->socket());
  ASSERT_GE(fd, 0);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  Buf chunk;
  for (int i = 0; i < 4096; ++i) {
    Buf f = frame({kRequestIdentities});
    chunk.insert(chunk.end(), f.begin(), f.end());
  }
  size_t sent = 0, at = 0;
  bool stalled = false;
  const auto t0 = Clock::now();
  auto stall_since = Clock::time_point::max();
  while (Clock::now() - t0 < 5s) {
    ssize_t n = ::send(fd, chunk.data() + at, chunk.size() - at, MSG_NOSIGNAL);
    if (n > 0) {
      sent += size_t(n);
      at = (at + size_t(n)) % chunk.size();
      stall_since = Clock::time_point::max();
      continue;
    }
    ASSERT_TRUE(n < 0 && errno == EAGAIN) << std::strerror(errno);
    if (stall_since == Clock::time_point::max()) stall_since = Clock::now();
    if (Clock::now() - stall_since > 300ms) {
      stalled = true;
      break;
    }
    std::this_thread::sleep_for(1ms);
  }
  const long rss_after = rss_kib(agent->pid());
  std::cout << "[ measured ] " << sent << " bytes of requests sent, agent memory " << rss_before << " -> " << rss_after << " KiB\n";
  EXPECT_TRUE(stalled) << "the agent kept reading: " << sent << " bytes of requests in 5 s";
  // The sanitizer build's allocator keeps freed memory in quarantine (up to 256 MiB): there the
  // bound shows only that the growth stops, not how small the queue is.
#ifdef TPMKEY_SANITIZED
  constexpr long kGrowthKib = 128 * 1024;
#else
  constexpr long kGrowthKib = 16 * 1024;
#endif
  EXPECT_LT(rss_after - rss_before, kGrowthKib) << "the agent's memory grew from " << rss_before << " to " << rss_after
                                                << " KiB";
  EXPECT_TRUE(still_serves(reference));

  // Every whole request sent is answered, with the same answer.
  const size_t requests = sent / 5;
  const Buf expected = frame(*one);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  size_t answers = 0, bad = 0;
  Buf buf(1 << 16), pending;
  pollfd p{fd, POLLIN, 0};
  while (answers < requests && poll(&p, 1, 10000) > 0) {
    ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0) break;
    pending.insert(pending.end(), buf.begin(), buf.begin() + n);
    size_t used = 0;
    while (pending.size() - used >= expected.size()) {
      if (!std::equal(expected.begin(), expected.end(), pending.begin() + long(used))) ++bad;
      used += expected.size();
      ++answers;
    }
    pending.erase(pending.begin(), pending.begin() + long(used));
  }
  close(fd);
  EXPECT_EQ(answers, requests);
  EXPECT_EQ(bad, 0u);
  EXPECT_TRUE(serves(*agent));
}

// The agent serves up to 256 clients at once: one more is closed at once. One leaves and one
// arrives while the agent is busy (a LOCK: PBKDF2), so both wait for the same poll round: the
// place it left is free for the new one.
TEST_F(AgentProtocolTest, MoreThan256ClientsAreTurnedAway) {
  auto agent = start({"--no-keystore"});
  std::vector<std::unique_ptr<AgentConnection>> clients;
  // Each one served before the next connects: the agent has then also seen the start-up check's
  // connection close, which would otherwise still hold a place when the 256th arrives.
  for (int i = 0; i < 256; ++i) {
    clients.push_back(std::make_unique<AgentConnection>(agent->socket()));
    ASSERT_TRUE(clients.back()->connected()) << i;
    ASSERT_TRUE(still_serves(*clients.back())) << i;
  }
  AgentConnection extra(agent->socket());
  ASSERT_TRUE(extra.connected());
  EXPECT_TRUE(extra.closed_by_agent());
  AgentConnection& locker = *clients.front();
  ASSERT_TRUE(locker.send(lock("busy")));
  std::this_thread::sleep_for(5ms);
  clients.pop_back();
  AgentConnection next(agent->socket());
  EXPECT_EQ(locker.receive(), kSuccessAnswer);
  EXPECT_TRUE(still_serves(next)) << agent->log();
  for (auto& c : clients) EXPECT_TRUE(still_serves(*c));
}

// ---- 4. Load ----------------------------------------------------------------------------------

// 32 clients, each on its own connection and thread, sign 50 times each with one TPM key; every
// signature verifies. On the bus (BusProxy in front of the swtpm): one TPM2_Sign per signature,
// and all TPM commands together close to one per signature: the first use adds the SRK, the
// session and the Load, and a TPM2_ReadPublic proof follows any pause of more than 1 ms. Measured
// on swtpm 0.7: 1608 or 1609 commands for 1600 signatures (1600 TPM2_Sign, 8 for the first use,
// 0 or 1 ReadPublic: 32 clients keep the agent busy).
TEST_F(AgentProtocolTest, ThirtyTwoClientsSignConcurrently) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  BusProxy bus(shared_swtpm().port());
  auto agent = start({}, {}, bus.tcti());
  constexpr int kClients = 32, kEach = 50, kTotal = kClients * kEach;
  std::atomic<int> good{0}, bad{0};
  std::atomic<bool> go{false};
  std::mutex first_error_mu;
  std::string first_error;
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      AgentConnection c(agent->socket());
      while (!go) std::this_thread::yield();
      for (int j = 0; j < kEach; ++j) {
        Buf data = text("client " + std::to_string(i) + " signature " + std::to_string(j));
        auto r = signature_ok(c.request(sign_request(k.blob, data, 0), 30000), k.pub.get(), data, "ecdsa-sha2-nistp256");
        if (r) {
          ++good;
          continue;
        }
        ++bad;
        std::lock_guard l(first_error_mu);
        if (first_error.empty()) first_error = r.message();
      }
    });
  }
  const auto t0 = Clock::now();
  go = true;
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(good.load(), kTotal);
  EXPECT_EQ(bad.load(), 0) << first_error << "\n" << agent->log();

  const std::vector<uint32_t> codes = bus.command_codes();
  const auto signs = std::count(codes.begin(), codes.end(), kTpmCcSign);
  const auto proofs = std::count(codes.begin(), codes.end(), kTpmCcReadPublic);
  const size_t total = codes.size();
  std::cout << "[ measured ] " << kTotal << " signatures in " << seconds << " s: " << total << " TPM commands ("
            << signs << " TPM2_Sign, " << proofs << " TPM2_ReadPublic, " << total - size_t(signs) - size_t(proofs)
            << " others), " << double(total) / kTotal << " per signature\n";
  RecordProperty("tpm_commands", int(total));
  RecordProperty("tpm2_sign", int(signs));
  RecordProperty("tpm2_readpublic", int(proofs));
  EXPECT_EQ(signs, kTotal);
#ifdef __SANITIZE_THREAD__
  // ThreadSanitizer (tools/test.sh) slows the agent several times over: more of its pauses
  // exceed the continuity window of a bare swtpm socket, so more signatures need a proof
  // (TPM2_ReadPublic) first. The other commands stay as few.
  EXPECT_LE(total - size_t(signs) - size_t(proofs), 16u);
#else
  EXPECT_LE(total, size_t(kTotal) * 11 / 10 + 16);
#endif
  EXPECT_EQ(agent->stop(), 0);
}

// ---- 5. Socket security -----------------------------------------------------------------------

// The socket is 0600 and this user's; a directory given with -a is the user's choice (as with
// ssh-agent -a): it may be open to others or reached through a symbolic link (/var/run is one
// to /run).
TEST_F(AgentProtocolTest, SocketIsPrivate) {
  auto agent = start({"--no-keystore"});
  struct stat st{};
  ASSERT_EQ(lstat(agent->socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, geteuid());
  agent->stop();

  const std::string open_dir = dir_ + "/open";
  ASSERT_EQ(mkdir(open_dir.c_str(), 0755), 0);
  chmod(open_dir.c_str(), 0755);
  AgentProcess in_open(open_dir, tcti_, keystore_, {"--no-keystore"});
  ASSERT_EQ(lstat(in_open.socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_TRUE(serves(in_open));

  const std::string real = dir_ + "/real", link = dir_ + "/link";
  ASSERT_EQ(mkdir(real.c_str(), 0700), 0);
  ASSERT_EQ(symlink(real.c_str(), link.c_str()), 0);
  std::unique_ptr<AgentProcess> via_link;
  try {
    via_link = std::make_unique<AgentProcess>(link, tcti_, keystore_, std::vector<std::string>{"--no-keystore"});
  } catch (const std::exception& e) {
    FAIL() << e.what();
  }
  EXPECT_TRUE(serves(*via_link));
  EXPECT_TRUE(exists(real + "/agent.sock"));
}

// The default place, $XDG_RUNTIME_DIR/tpmkey/agent.sock (--print-socket says so; -a overrides
// it): the agent makes the directory 0700, the socket is 0600, and both are gone when it stops.
// A directory there that others can enter, or that another user owns, is refused.
TEST_F(AgentProtocolTest, DefaultSocketDirectory) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  const std::string xdg = dir_ + "/run", home = xdg + "/tpmkey";
  ASSERT_EQ(mkdir(xdg.c_str(), 0700), 0);
  const std::vector<std::string> env = {"XDG_RUNTIME_DIR=" + xdg, "TSS2_LOG=all+none"};
  auto printed = run({tpmkey_bin(), "agent", "--print-socket"}, env);
  EXPECT_OK(printed);
  EXPECT_EQ(printed.out, home + "/agent.sock\n");
  printed = run({tpmkey_bin(), "agent", "--print-socket", "-a", dir_ + "/x.sock"}, env);
  EXPECT_OK(printed);
  EXPECT_EQ(printed.out, dir_ + "/x.sock\n");
  EXPECT_FALSE(exists(home)) << "--print-socket makes nothing";

  // Command mode: the agent runs `sh` with SSH_AUTH_SOCK set and stops when it ends.
  auto r = run({tpmkey_bin(), "agent", "--tcti", tcti_, "--keystore", keystore_, "sh", "-c",
                "stat -c '%a %u' \"${SSH_AUTH_SOCK%/*}\" \"$SSH_AUTH_SOCK\"; echo \"$SSH_AUTH_SOCK\"; ssh-add -l"},
               env, "", 60);
  EXPECT_OK(r);
  const std::string uid = std::to_string(geteuid());
  EXPECT_EQ(r.out.substr(0, r.out.find("256 SHA256:")),
            "700 " + uid + "\n600 " + uid + "\n" + home + "/agent.sock\n");
  EXPECT_NE(r.out.find(" k (ECDSA)\n"), std::string::npos) << r.out;
  for (auto t0 = Clock::now(); exists(home) && Clock::now() - t0 < 5s;) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(exists(home)) << "the socket and its directory are removed when the agent stops";

  const std::vector<std::string> foreground = {tpmkey_bin(), "agent", "-D", "--no-keystore", "--tcti", tcti_};
  ASSERT_EQ(mkdir(home.c_str(), 0755), 0);
  chmod(home.c_str(), 0755);
  auto open = run(foreground, env, "", 10);
  EXPECT_FALSE(open.timed_out);
  EXPECT_FAILS_WITH(open, home + " has mode 0755: other users can reach the socket; it must be 0700");
  EXPECT_FALSE(exists(home + "/agent.sock"));

  if (geteuid() == 0) {
    chmod(home.c_str(), 0700);
    ASSERT_EQ(chown(home.c_str(), 65534, 65534), 0);
    auto theirs = run(foreground, env, "", 10);
    EXPECT_FALSE(theirs.timed_out);
    EXPECT_FAILS_WITH(theirs, home + " belongs to another user: refusing to use it");
    EXPECT_FALSE(exists(home + "/agent.sock"));
  }
}

// A second agent on the path of a live one is refused and leaves the first one's socket alone.
TEST_F(AgentProtocolTest, SecondAgentIsRefused) {
  auto first = start({"--no-keystore"});
  auto second = run({tpmkey_bin(), "agent", "-D", "--no-keystore", "-a", first->socket(), "--tcti", tcti_},
                    {"TSS2_LOG=all+none"}, "", 10);
  EXPECT_FALSE(second.timed_out);
  EXPECT_FAILS_WITH(second, "an agent is already listening at " + first->socket());
  struct stat st{};
  ASSERT_EQ(lstat(first->socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_TRUE(serves(*first));
}

// An agent killed with SIGKILL leaves its socket file; the next agent on that path replaces it.
// A file there that is not a socket is never replaced.
TEST_F(AgentProtocolTest, StaleSocketIsReplaced) {
  std::string path;
  {
    auto dead = start({"--no-keystore"});
    path = dead->socket();
    kill(dead->pid(), SIGKILL);
    EXPECT_EQ(dead->stop(), 128 + SIGKILL);
  }
  ASSERT_TRUE(exists(path));
  EXPECT_LT(connect_unix(path), 0);
  EXPECT_EQ(errno, ECONNREFUSED);
  auto next = start({"--no-keystore"});
  EXPECT_TRUE(serves(*next));

  const std::string file = dir_ + "/not-a-socket";
  write_file(file, "precious");
  auto r = run({tpmkey_bin(), "agent", "-D", "--no-keystore", "-a", file, "--tcti", tcti_}, {"TSS2_LOG=all+none"}, "", 10);
  EXPECT_FAILS_WITH(r, file + " exists and is not a socket: refusing to replace it");
  EXPECT_EQ(read_file(file), "precious");
}

// A client of another uid: first the socket's mode keeps it out (EACCES); with the socket opened
// to everyone, the agent itself turns it away (SO_PEERCRED): the connection is closed without an
// answer. Needs root, to become 'nobody' (65534).
TEST_F(AgentProtocolTest, ClientOfAnotherUidIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to connect as another user (setuid to 65534)";
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  // In a child that becomes nobody: 0 closed without an answer, 1 answered, 3 EACCES on connect,
  // 4 no reaction within 5 s, others: could not become nobody or connect.
  auto as_nobody = [&]() {
    const std::string sock = agent->socket();
    const Buf request = frame({kRequestIdentities});
    pid_t pid = fork();
    if (pid == 0) {
      if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(10);
      int fd = connect_unix(sock);
      if (fd < 0) _exit(errno == EACCES ? 3 : 11);
      if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) < 0 && errno != EPIPE && errno != ECONNRESET)
        _exit(12);
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 5000) <= 0) _exit(4);
      uint8_t b;
      ssize_t n = recv(fd, &b, 1, 0);
      _exit(n > 0 ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
  };
  EXPECT_EQ(as_nobody(), 3) << "the socket is 0600";
  ASSERT_EQ(chmod(dir_.c_str(), 0711), 0);
  ASSERT_EQ(chmod(agent->socket().c_str(), 0666), 0);
  EXPECT_EQ(as_nobody(), 0) << agent->log();
  EXPECT_NE(agent->log().find("refused a client of uid 65534"), std::string::npos) << agent->log();
  EXPECT_TRUE(serves(*agent));
}

// ---- 6. TPM outage ----------------------------------------------------------------------------

// swtpm killed under a running agent (TPMKEY_TIMEOUT=2): sign requests fail at once and the agent
// keeps serving (listing needs no TPM); once swtpm is back, signatures succeed. Then swtpm
// stopped (SIGSTOP, it accepts but does not answer): a sign request fails after the 2 s timeout;
// after SIGCONT it signs again. The agent exits cleanly and leaves nothing in the TPM.
TEST_F(AgentProtocolTest, TpmOutage) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start({}, {"TPMKEY_TIMEOUT=2"});
  AgentConnection c(agent->socket());
  Buf data = text("before");
  ASSERT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"));

  TpmBack back;
  shared_swtpm().kill_hard();
  back.down = true;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    EXPECT_EQ(c.request(sign_request(k.blob, text("away"), 0), 10000), kFailureAnswer);
    EXPECT_LT(Clock::now() - t0, 3s);
    EXPECT_EQ(comments(c), std::vector<std::string>{"k"});
  }
  EXPECT_TRUE(serves(*agent));
  shared_swtpm().start();
  back.down = false;
  data = text("back");
  EXPECT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"))
      << agent->log();

  shared_swtpm().pause();
  back.paused = true;
  const auto t0 = Clock::now();
  EXPECT_EQ(c.request(sign_request(k.blob, text("stopped"), 0), 10000), kFailureAnswer);
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, 1500ms);
  EXPECT_LT(took, 5s);
  shared_swtpm().resume();
  back.paused = false;
  for (const char* s : {"resumed", "again"}) {
    data = text(s);
    EXPECT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"))
        << agent->log();
  }
  EXPECT_EQ(agent->stop(), 0);
  TpmHandles h = tpm_handles(tcti_);
  EXPECT_TRUE(h.clean()) << h.describe();
}

// ---- 7. Exit ----------------------------------------------------------------------------------

// The agent signs with four TPM keys (P-256, P-384, RSA, a password key added with its PIN: more
// keys than swtpm has object slots) and is stopped (SIGTERM) while a client is connected and
// another has sent half a frame: it exits with 0 at once and nothing of it is left in the TPM.
TEST_F(AgentProtocolTest, LeavesTpmClean) {
  TpmKey p256 = create("p256"), p384 = create("p384", {"--algorithm", "ec-p384"}),
         rsa = create("rsa", {"--algorithm", "rsa2048"}), pk = create_with_password("pk");
  ASSERT_TRUE(p256.pub && p384.pub && rsa.pub && pk.pub);
  auto agent = start();
  AgentConnection c(agent->socket()), half(agent->socket());
  ASSERT_TRUE(accepted(c, add_smartcard("tpm2:pk", "pw"))) << agent->log();
  for (int round = 0; round < 2; ++round) {
    Buf data = random_bytes(20);
    EXPECT_TRUE(signature_ok(c.request(sign_request(p256.blob, data, 0)), p256.pub.get(), data, "ecdsa-sha2-nistp256"));
    EXPECT_TRUE(signature_ok(c.request(sign_request(p384.blob, data, 0)), p384.pub.get(), data, "ecdsa-sha2-nistp384"));
    EXPECT_TRUE(signature_ok(c.request(sign_request(rsa.blob, data, kRsaSha2_256)), rsa.pub.get(), data, "rsa-sha2-256"));
    EXPECT_TRUE(signature_ok(c.request(sign_request(pk.blob, data, 0)), pk.pub.get(), data, "ecdsa-sha2-nistp256"));
  }
  ASSERT_TRUE(half.send_raw({0, 0, 1, 0, kSignRequest}));
  const auto t0 = Clock::now();
  EXPECT_EQ(agent->stop(), 0);
  EXPECT_LT(Clock::now() - t0, 2s);
  TpmHandles h = tpm_handles(tcti_);
  EXPECT_TRUE(h.clean()) << h.describe();
  EXPECT_FALSE(exists(dir_ + "/agent.sock")) << "the socket is removed";
}

// ---- Bugs found and fixed ---------------------------------------------------------------------

// A key deleted from the keystore (`tpmkey delete`) must not sign any more, even for a client that
// kept its blob from an earlier listing (sign() once trusted its cached listing).
TEST_F(AgentProtocolTest, DeletedKeystoreKeyNoLongerSigns) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  Buf data = text("before");
  ASSERT_TRUE(signature_ok(c.request(sign_request(k.blob, data, 0)), k.pub.get(), data, "ecdsa-sha2-nistp256"));
  ASSERT_OK(tpmkey({"delete", "k", "--yes"}));
  EXPECT_TRUE(refused(c, sign_request(k.blob, text("after the delete"), 0)));
}

// session-bind@openssh.com carries the host key's signature over the session identifier so the
// agent can verify the binding (PROTOCOL.agent); OpenSSH's agent refuses one that does not
// verify, and so does this one (it once took any host key and signature).
TEST_F(AgentProtocolTest, SessionBindIsVerified) {
  auto agent = start({"--no-keystore"});
  AgentConnection c(agent->socket());
  SoftKey host = ed25519_key(), other = ed25519_key();
  const Buf sid = random_bytes(32);
  EXPECT_TRUE(refused(c, Wire().u8(kExtension).str("session-bind@openssh.com").str("not a key").str(sid)
                             .str("not a signature").u8(0)));
  // Signed by another key than the host key it names.
  Buf forged = session_bind(other, sid, false);
  Buf good = session_bind(host, sid, false);
  Parse f(forged);
  uint8_t type = 0;
  std::string name;
  Buf key, id, sig;
  ASSERT_TRUE(f.u8(&type) && f.str(&name) && f.str(&key) && f.str(&id) && f.str(&sig));
  EXPECT_TRUE(refused(c, Wire().u8(kExtension).str(name).str(host.blob).str(id).str(sig).u8(0)));
  EXPECT_TRUE(accepted(c, good));
}

// REMOVE_SMARTCARD_KEY with a byte more than the message holds should fail and remove nothing,
// as every other message with a body does here (TrailingBytesFail).
TEST_F(AgentProtocolTest, RemoveSmartcardKeyWithTrailingBytesFails) {
  TpmKey k = create("k");
  ASSERT_TRUE(k.pub);
  auto agent = start();
  AgentConnection c(agent->socket());
  ASSERT_TRUE(accepted(c, add_smartcard("tpm2:k", "")));
  Buf m = remove_smartcard("tpm2:k");
  m.push_back(0);
  EXPECT_TRUE(refused(c, m));
  EXPECT_TRUE(lists(c, k.blob));
}

// -a with a relative path in daemon mode: SSH_AUTH_SOCK should name the socket from any
// directory, and the agent should remove it when it stops (it once printed "rel.sock" and, after
// chdir("/"), left the socket behind).
TEST_F(AgentProtocolTest, RelativeSocketPathInDaemonMode) {
  auto r = run({"sh", "-c",
                "cd '" + dir_ + "' && exec '" + tpmkey_bin() + "' agent -s --no-keystore -a rel.sock --tcti '" + tcti_ + "'"},
               {"TSS2_LOG=all+none"}, "", 30);
  ASSERT_OK(r);
  auto value = [&](const std::string& name) {
    size_t at = r.out.find(name + "=");
    if (at == std::string::npos) return std::string();
    at += name.size() + 1;
    return r.out.substr(at, r.out.find(';', at) - at);
  };
  const pid_t pid = pid_t(std::atol(value("SSH_AGENT_PID").c_str()));
  ASSERT_GT(pid, 1) << r.out;
  EXPECT_EQ(value("SSH_AUTH_SOCK"), dir_ + "/rel.sock") << "SSH_AUTH_SOCK must work from any directory";
  kill(pid, SIGTERM);
  for (auto t0 = Clock::now(); kill(pid, 0) == 0 && Clock::now() - t0 < 5s;) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(exists(dir_ + "/rel.sock")) << "the agent removes its socket when it stops";
}

}  // namespace
}  // namespace tpmkey::test
