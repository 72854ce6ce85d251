#include "keystore/openssh_key.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>

#include "keystore/private_key.h"
#include "keystore/ssh_wire.h"

namespace tpmkey {
namespace {

using SecretBnPtr = OsslPtr<BIGNUM, BN_clear_free>;
using BnCtxPtr = OsslPtr<BN_CTX, BN_CTX_free>;

constexpr std::string_view kMagic{"openssh-key-v1\0", 15};  // PROTOCOL.key: AUTH_MAGIC, its NUL included
constexpr size_t kBlockSize = 8;                             // of cipher "none"
constexpr int kMaxRsaBits = 8192;                            // far above what tpmkey imports

Error damaged(const std::string& why) {
  return make_error(Reason::kMalformedKey, "the OpenSSH private key is damaged: " + why);
}

bool is_b64(char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '+' ||
         ch == '/' || ch == '=';
}

// The base64 between the BEGIN and END lines, decoded into wiped memory.
Result<SecretBytes> decode_armor(std::string_view text) {
  static constexpr std::string_view kBegin = "-----BEGIN OPENSSH PRIVATE KEY-----";
  static constexpr std::string_view kEnd = "-----END OPENSSH PRIVATE KEY-----";
  if (text.substr(0, kBegin.size()) != kBegin) return damaged("no BEGIN OPENSSH PRIVATE KEY line");
  const size_t end = text.find(kEnd, kBegin.size());
  if (end == std::string_view::npos) return damaged("no END OPENSSH PRIVATE KEY line (the file is cut short)");
  const std::string_view body = text.substr(kBegin.size(), end - kBegin.size());
  SecretBytes clean(body.size());
  size_t n = 0;
  for (char ch : body) {
    if (ch == '\n' || ch == '\r' || ch == ' ' || ch == '\t') continue;
    if (!is_b64(ch)) return damaged("a character that is not base64 between the BEGIN and END lines");
    clean.data()[n++] = uint8_t(ch);
  }
  if (n == 0 || n % 4 != 0) return damaged("its base64 text has a wrong length");
  SecretBytes out(n / 4 * 3);
  EVP_ENCODE_CTX* ctx = EVP_ENCODE_CTX_new();
  if (!ctx) return make_error(Reason::kInternal, "EVP_ENCODE_CTX_new failed");
  EVP_DecodeInit(ctx);
  int len = 0, fin = 0;
  const int ok = EVP_DecodeUpdate(ctx, out.data(), &len, clean.data(), int(n));
  const int ok2 = ok >= 0 ? EVP_DecodeFinal(ctx, out.data() + len, &fin) : -1;
  EVP_ENCODE_CTX_free(ctx);
  ERR_clear_error();
  if (ok < 0 || ok2 < 0) return damaged("its base64 text does not decode");
  SecretBytes decoded(out.data(), size_t(len + fin));
  return decoded;
}

bool eq(const SshView& v, std::string_view s) { return v.text() == s; }

// "an Ed25519 key (OpenSSH \"ssh-ed25519\")" for the types tpmkey does not import; empty for the
// ones it reads.
std::string unsupported_type(std::string_view t) {
  const std::string quoted = "\"" + std::string(t) + "\"";
  if (t == "ssh-rsa" || t == "ecdsa-sha2-nistp256" || t == "ecdsa-sha2-nistp384" || t == "ecdsa-sha2-nistp521")
    return "";
  if (t == "ssh-ed25519") return "an Ed25519 key (OpenSSH " + quoted + ")";
  if (t == "ssh-dss") return "a DSA key (OpenSSH " + quoted + ")";
  if (t.substr(0, 3) == "sk-")
    return "a FIDO security key (OpenSSH " + quoted + "), whose private key stays in the token";
  return "an OpenSSH key of type " + quoted;
}

struct Curve {
  std::string_view type, ssh_name;
  const char* group;
  size_t field;
};
constexpr Curve kCurves[] = {{"ecdsa-sha2-nistp256", "nistp256", "P-256", 32},
                             {"ecdsa-sha2-nistp384", "nistp384", "P-384", 48},
                             {"ecdsa-sha2-nistp521", "nistp521", "P-521", 66}};

Result<EvpPkeyPtr> from_params(const Crypto& c, const char* alg, OSSL_PARAM_BLD* bld) {
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(c.libctx(), alg, "provider=default"));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()) != 1) {
    ERR_clear_error();
    return damaged(std::string("OpenSSL does not take its ") + alg + " key (a value is out of range)");
  }
  EvpPkeyPtr pkey(raw);
  // The key pair itself: the public key valid, the private one in range, and the two a pair.
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(c.libctx(), pkey.get(), "provider=default"));
  if (!check || EVP_PKEY_pairwise_check(check.get()) != 1 || EVP_PKEY_public_check(check.get()) != 1) {
    ERR_clear_error();
    return damaged(std::string("its ") + alg + " private and public keys are not a valid pair");
  }
  return pkey;
}

SecretBnPtr secret_bn(const SshView& v) {
  SecretBnPtr b(BN_secure_new());
  if (b && !BN_bin2bn(v.data, int(v.size), b.get())) b.reset();
  return b;
}

Result<EvpPkeyPtr> read_ecdsa(const Crypto& c, const Curve& curve, SshReader& r, const Bytes& pub_blob) {
  SshView name, q, d;
  if (!r.string(&name) || !r.string(&q) || !r.mpint(&d)) return damaged("its ECDSA key is cut short");
  if (!eq(name, curve.ssh_name))
    return damaged("its key type is " + std::string(curve.type) + " but its curve is \"" +
                   std::string(name.text()) + "\"");
  if (q.size != 1 + 2 * curve.field || q.data[0] != 0x04)
    return damaged("its public point is not an uncompressed point on " + std::string(curve.ssh_name));
  if (d.size == 0 || d.size > curve.field) return damaged("its private scalar does not fit " + std::string(curve.ssh_name));
  SshWriter w;
  w.string(curve.type);
  w.string(curve.ssh_name);
  w.string(q.data, q.size);
  if (w.bytes() != pub_blob) return damaged("its public key and the public part of its private key differ");
  SecretBnPtr dn = secret_bn(d);
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!dn || !bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, curve.group, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, q.data, q.size) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, dn.get()) != 1)
    return make_error(Reason::kInternal, "cannot build the EC key's parameters");
  return from_params(c, "EC", bld.get());
}

Result<EvpPkeyPtr> read_rsa(const Crypto& c, SshReader& r, const Bytes& pub_blob) {
  SshView n, e, d, iqmp, p, q;
  if (!r.mpint(&n) || !r.mpint(&e) || !r.mpint(&d) || !r.mpint(&iqmp) || !r.mpint(&p) || !r.mpint(&q))
    return damaged("its RSA key is cut short");
  if (n.size == 0 || n.size * 8 > size_t(kMaxRsaBits) || e.size == 0 || e.size > n.size || d.size == 0 ||
      d.size > n.size || p.size == 0 || q.size == 0 || p.size > n.size || q.size > n.size || iqmp.size > n.size)
    return damaged("a value of its RSA key is empty or larger than its modulus (or the modulus is over 8192 bits)");
  SshWriter w;
  w.string("ssh-rsa");
  w.mpint(e.data, e.size);
  w.mpint(n.data, n.size);
  if (w.bytes() != pub_blob) return damaged("its public key and the public part of its private key differ");
  BnCtxPtr bn(BN_CTX_secure_new());
  SecretBnPtr N = secret_bn(n), E = secret_bn(e), D = secret_bn(d), Iqmp = secret_bn(iqmp), P = secret_bn(p),
              Q = secret_bn(q);
  SecretBnPtr dmp1(BN_secure_new()), dmq1(BN_secure_new()), t(BN_secure_new());
  if (!bn || !N || !E || !D || !Iqmp || !P || !Q || !dmp1 || !dmq1 || !t)
    return make_error(Reason::kInternal, "out of memory for the RSA key");
  // n = p q with both primes above 1, and d's CRT exponents: d mod (p-1), d mod (q-1).
  if (BN_is_one(P.get()) || BN_is_one(Q.get()) || !BN_mul(t.get(), P.get(), Q.get(), bn.get()) ||
      BN_cmp(t.get(), N.get()) != 0)
    return damaged("its RSA primes p and q do not multiply to its modulus");
  if (!BN_sub(t.get(), P.get(), BN_value_one()) || !BN_mod(dmp1.get(), D.get(), t.get(), bn.get()) ||
      !BN_sub(t.get(), Q.get(), BN_value_one()) || !BN_mod(dmq1.get(), D.get(), t.get(), bn.get()))
    return make_error(Reason::kInternal, "cannot compute the RSA key's CRT exponents");
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, N.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, E.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_D, D.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_FACTOR1, P.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_FACTOR2, Q.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_EXPONENT1, dmp1.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_EXPONENT2, dmq1.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_COEFFICIENT1, Iqmp.get()) != 1)
    return make_error(Reason::kInternal, "cannot build the RSA key's parameters");
  return from_params(c, "RSA", bld.get());
}

// The file's armor decoded and its header split: the views point into `blob`.
struct Parsed {
  SecretBytes blob;
  SshView cipher, kdf, kdfopts, pub, priv, pub_type;
  bool encrypted() const { return !eq(kdf, "none"); }
};

// Everything before the private section: the magic, cipher, kdf, one key, and its public key of
// a type tpmkey imports (said first: converting or decrypting the file would not help).
Status parse(std::string_view text, Parsed* out) {
  auto blob = decode_armor(text);
  if (!blob) return blob.take_error();
  out->blob = std::move(*blob);
  const SecretBytes& b = out->blob;
  if (b.size() < kMagic.size() || std::string_view(reinterpret_cast<const char*>(b.data()), kMagic.size()) != kMagic)
    return damaged("it does not start with \"openssh-key-v1\"");
  SshReader r(b.data() + kMagic.size(), b.size() - kMagic.size());
  uint32_t nkeys = 0;
  if (!r.string(&out->cipher) || !r.string(&out->kdf) || !r.string(&out->kdfopts) || !r.u32(&nkeys))
    return damaged("its header is cut short");
  if (nkeys != 1)
    return make_error(Reason::kUnsupported, "the OpenSSH file holds " + std::to_string(nkeys) +
                                                " keys; tpmkey imports a file with exactly one");
  if (!r.string(&out->pub) || !r.string(&out->priv)) return damaged("it is cut short");
  if (!r.done()) return damaged("there are bytes after its private section");
  SshReader pr(out->pub);
  if (!pr.string(&out->pub_type)) return damaged("its public key has no type");
  if (std::string u = unsupported_type(out->pub_type.text()); !u.empty())
    return make_error(Reason::kUnsupported, "this is " + u + ": " + kWhatImports);
  const SshView& cipher = out->cipher;
  const SshView& kdf = out->kdf;
  if (eq(cipher, "none") && eq(kdf, "none")) return {};
  if (eq(cipher, "none") || eq(kdf, "none"))
    return damaged("its cipher is \"" + std::string(cipher.text()) + "\" but its kdf is \"" + std::string(kdf.text()) +
                   "\"");
  if (!eq(kdf, "bcrypt"))
    return make_error(Reason::kUnsupported, "this OpenSSH key is encrypted with kdf \"" + std::string(kdf.text()) +
                                                "\", which tpmkey import does not know");
  return {};
}

// The SSH public key blob of `pkey` (an RSA key, or an EC key on a curve of kCurves); empty for
// anything else.
Bytes ssh_public_blob(EVP_PKEY* pkey) {
  SshWriter w;
  if (EVP_PKEY_is_a(pkey, "RSA")) {
    BIGNUM *n = nullptr, *e = nullptr;
    const bool ok = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
                    EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) == 1;
    SecretBnPtr N(n), E(e);
    if (!ok) {
      ERR_clear_error();
      return {};
    }
    Bytes nb(size_t(BN_num_bytes(N.get()))), eb(size_t(BN_num_bytes(E.get())));
    BN_bn2bin(N.get(), nb.data());
    BN_bn2bin(E.get(), eb.data());
    w.string("ssh-rsa");
    w.mpint(eb.data(), eb.size());
    w.mpint(nb.data(), nb.size());
    return w.bytes();
  }
  char group[80] = "";
  size_t glen = 0;
  uint8_t point[1 + 2 * 66];
  size_t plen = 0;
  if (!EVP_PKEY_is_a(pkey, "EC") ||
      EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen) != 1 ||
      EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point, &plen) != 1) {
    ERR_clear_error();
    return {};
  }
  // OpenSSL names the curves "prime256v1", "secp384r1", ...
  const int nid = OBJ_sn2nid(group) != NID_undef ? OBJ_sn2nid(group) : EC_curve_nist2nid(group);
  for (const Curve& curve : kCurves)
    if (nid != NID_undef && nid == EC_curve_nist2nid(curve.group)) {
      w.string(curve.type);
      w.string(curve.ssh_name);
      w.string(point, plen);
      return w.bytes();
    }
  return {};
}

}  // namespace

Result<OpenSshHeader> read_openssh_header(std::string_view text) {
  Parsed p;
  TPMKEY_TRY(parse(text, &p));
  OpenSshHeader out;
  out.type = std::string(p.pub_type.text());
  out.cipher = std::string(p.cipher.text());
  out.kdf = std::string(p.kdf.text());
  out.encrypted = p.encrypted();
  out.public_blob = p.pub.bytes();
  return out;
}

Status check_openssh_public_key(const OpenSshHeader& header, EVP_PKEY* pkey) {
  const Bytes blob = ssh_public_blob(pkey);
  if (blob.empty() || blob != header.public_blob)
    return make_error(Reason::kMalformedKey, "the private key and the OpenSSH file's public key differ");
  return {};
}

Result<EvpPkeyPtr> read_openssh_private_key(const Crypto& c, std::string_view text) {
  Parsed p;
  TPMKEY_TRY(parse(text, &p));
  if (p.encrypted())
    return make_error(Reason::kInternal, "this OpenSSH key is encrypted: decrypt_with_ssh_keygen reads it");
  const SshView& kdfopts = p.kdfopts;
  const SshView& priv = p.priv;
  const SshView& pub = p.pub;
  const SshView& pub_type = p.pub_type;
  if (kdfopts.size != 0) return damaged("its kdf is \"none\" but it has kdf options");
  if (priv.size < kBlockSize || priv.size % kBlockSize != 0)
    return damaged("its private section is not a whole number of 8-byte blocks");

  SshReader s(priv);
  uint32_t check1 = 0, check2 = 0;
  SshView type;
  if (!s.u32(&check1) || !s.u32(&check2)) return damaged("its private section is cut short");
  if (check1 != check2) return damaged("its two check numbers differ");
  if (!s.string(&type)) return damaged("its private section is cut short");
  if (type.text() != pub_type.text())
    return damaged("its public key is of type \"" + std::string(pub_type.text()) + "\" but its private key of type \"" +
                   std::string(type.text()) + "\"");
  const Bytes pub_blob = pub.bytes();
  Result<EvpPkeyPtr> key = make_error(Reason::kInternal, "no key");
  if (eq(type, "ssh-rsa")) {
    key = read_rsa(c, s, pub_blob);
  } else {
    for (const Curve& curve : kCurves)
      if (eq(type, curve.type)) key = read_ecdsa(c, curve, s, pub_blob);
  }
  if (!key) return key;
  SshView comment;
  if (!s.string(&comment)) return damaged("its private section is cut short (no comment)");
  // The padding: 1, 2, 3, ... up to the block size.
  for (uint8_t i = 1; !s.done(); ++i) {
    uint8_t pad = 0;
    s.u8(&pad);
    if (pad != i || i >= kBlockSize) return damaged("its padding is not 1, 2, 3, ...");
  }
  return key;
}

}  // namespace tpmkey
