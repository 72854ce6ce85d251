#include "tools/agent/ssh_key.h"

#include <openssl/core_names.h>
#include <openssl/rsa.h>

#include <bit>
#include <cstring>

#include "provider/params.h"

namespace tpmkey::agent {
namespace {

Error openssl_error(const std::string& what) {
  std::string detail = drain_openssl_errors("; ");
  return make_error(Reason::kInternal, detail.empty() ? what : what + ": " + detail);
}

Bytes bn_bytes(const BIGNUM* bn) {
  Bytes b(size_t(BN_num_bytes(bn)));
  BN_bn2bin(bn, b.data());
  return b;
}

// nistp256/384/521 by the key's size; nullptr for other curves.
const char* ssh_curve(int bits) {
  switch (bits) {
    case 256: return "nistp256";
    case 384: return "nistp384";
    case 521: return "nistp521";
    default: return nullptr;
  }
}
const char* curve_group(std::string_view curve) {
  if (curve == "nistp256") return "P-256";
  if (curve == "nistp384") return "P-384";
  if (curve == "nistp521") return "P-521";
  return nullptr;
}
// RFC 5656: the hash goes with the curve.
const char* curve_digest(int bits) { return bits <= 256 ? "SHA256" : bits <= 384 ? "SHA384" : "SHA512"; }

// A default-provider key of `type` from the parameters in `bld`; `selection`: EVP_PKEY_KEYPAIR or
// EVP_PKEY_PUBLIC_KEY.
Result<EvpPkeyPtr> fromdata(OSSL_LIB_CTX* libctx, const char* type, int selection, OSSL_PARAM_BLD* bld) {
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(libctx, type, "provider=default"));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, selection, params.get()) <= 0)
    return openssl_error("cannot make the key");
  return EvpPkeyPtr(pkey);
}

Result<EvpPkeyPtr> from_params(OSSL_LIB_CTX* libctx, const char* type, OSSL_PARAM_BLD* bld) {
  auto out = fromdata(libctx, type, EVP_PKEY_KEYPAIR, bld);
  if (!out) return out;
  // The private half must belong to the public half it came with.
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(libctx, out->get(), "provider=default"));
  if (!check || EVP_PKEY_pairwise_check(check.get()) <= 0) {
    ERR_clear_error();
    return make_error(Reason::kMalformedKey, "the private key does not match its public key");
  }
  return out;
}

Result<PrivateKey> read_ecdsa(SshReader& r, std::string_view type, OSSL_LIB_CTX* libctx) {
  SshView curve, q, d;
  if (!r.string(&curve) || !r.string(&q) || !r.mpint(&d)) return make_error(Reason::kMalformedKey, "truncated ECDSA key");
  const char* group = curve_group(curve.text());
  if (!group || type != "ecdsa-sha2-" + std::string(curve.text()))
    return make_error(Reason::kUnsupported, "unsupported ECDSA curve");
  BignumPtr priv(BN_secure_new());
  if (!priv || !BN_bin2bn(d.data, int(d.size), priv.get())) return openssl_error("cannot read the private key");
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, q.data, q.size) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, priv.get()))
    return openssl_error("cannot read the key");
  auto pkey = from_params(libctx, "EC", bld.get());
  if (!pkey) return pkey.take_error();
  auto blob = public_blob(pkey->get());
  if (!blob) return blob.take_error();
  return PrivateKey{std::move(*pkey), std::move(*blob)};
}

Result<PrivateKey> read_rsa(SshReader& r, OSSL_LIB_CTX* libctx) {
  SshView n, e, d, iqmp, p, q;
  if (!r.mpint(&n) || !r.mpint(&e) || !r.mpint(&d) || !r.mpint(&iqmp) || !r.mpint(&p) || !r.mpint(&q))
    return make_error(Reason::kMalformedKey, "truncated RSA key");
  // In bits, as OpenSSH counts (a 1020-bit modulus has 128 bytes too); mpint() dropped leading zeros.
  const size_t n_bits = n.size ? (n.size - 1) * 8 + size_t(std::bit_width(unsigned(n.data[0]))) : 0;
  if (n_bits < 1024 || n_bits > 16384) return make_error(Reason::kUnsupported, "RSA keys need 1024 to 16384 bits");
  auto bn = [](SshView v, bool secret) {
    BignumPtr b(secret ? BN_secure_new() : BN_new());
    if (b && !BN_bin2bn(v.data, int(v.size), b.get())) b.reset();
    return b;
  };
  BignumPtr bn_n = bn(n, false), bn_e = bn(e, false), bn_d = bn(d, true), bn_p = bn(p, true), bn_q = bn(q, true),
            bn_iqmp = bn(iqmp, true), dmp1(BN_secure_new()), dmq1(BN_secure_new()), p1(BN_secure_new()),
            q1(BN_secure_new());
  using BnCtxPtr = OsslPtr<BN_CTX, BN_CTX_free>;
  BnCtxPtr bctx(BN_CTX_secure_new());
  if (!bn_n || !bn_e || !bn_d || !bn_p || !bn_q || !bn_iqmp || !dmp1 || !dmq1 || !p1 || !q1 || !bctx)
    return openssl_error("cannot read the RSA key");
  // The CRT exponents OpenSSH does not send: d mod (p-1), d mod (q-1).
  if (BN_is_zero(bn_p.get()) || BN_is_zero(bn_q.get()) || !BN_sub(p1.get(), bn_p.get(), BN_value_one()) ||
      !BN_sub(q1.get(), bn_q.get(), BN_value_one()) || !BN_mod(dmp1.get(), bn_d.get(), p1.get(), bctx.get()) ||
      !BN_mod(dmq1.get(), bn_d.get(), q1.get(), bctx.get()))
    return make_error(Reason::kMalformedKey, "the RSA key's factors are not valid");
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_D, bn_d.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_FACTOR1, bn_p.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_FACTOR2, bn_q.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_EXPONENT1, dmp1.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_EXPONENT2, dmq1.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_COEFFICIENT1, bn_iqmp.get()))
    return openssl_error("cannot read the RSA key");
  auto pkey = from_params(libctx, "RSA", bld.get());
  if (!pkey) return pkey.take_error();
  auto blob = public_blob(pkey->get());
  if (!blob) return blob.take_error();
  return PrivateKey{std::move(*pkey), std::move(*blob)};
}

Result<PrivateKey> read_ed25519(SshReader& r, OSSL_LIB_CTX* libctx) {
  SshView pub, priv;
  if (!r.string(&pub) || !r.string(&priv)) return make_error(Reason::kMalformedKey, "truncated Ed25519 key");
  // The private string is seed || public key.
  if (pub.size != 32 || priv.size != 64 || std::memcmp(priv.data + 32, pub.data, 32) != 0)
    return make_error(Reason::kMalformedKey, "the Ed25519 key has the wrong size or does not match");
  EvpPkeyPtr pkey(EVP_PKEY_new_raw_private_key_ex(libctx, "ED25519", "provider=default", priv.data, 32));
  if (!pkey) return openssl_error("cannot make the Ed25519 key");
  auto blob = public_blob(pkey.get());
  if (!blob) return blob.take_error();
  SshWriter expected;
  expected.string("ssh-ed25519");
  expected.string(pub.data, pub.size);
  if (*blob != expected.bytes()) return make_error(Reason::kMalformedKey, "the private key does not match its public key");
  return PrivateKey{std::move(pkey), std::move(*blob)};
}

}  // namespace

Result<Bytes> public_blob(EVP_PKEY* pkey) {
  SshWriter w;
  if (EVP_PKEY_is_a(pkey, "EC")) {
    const char* curve = ssh_curve(EVP_PKEY_get_bits(pkey));
    if (!curve) return make_error(Reason::kUnsupported, "SSH has no name for this EC curve");
    uint8_t q[1 + 2 * 66];
    size_t qlen = 0;
    if (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, q, sizeof q, &qlen) || qlen < 1 ||
        q[0] != 0x04)
      return openssl_error("cannot read the EC public key");
    w.string("ecdsa-sha2-" + std::string(curve));
    w.string(curve);
    w.string(q, qlen);
  } else if (EVP_PKEY_is_a(pkey, "RSA")) {
    BIGNUM *n = nullptr, *e = nullptr;
    EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n);
    EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e);
    BignumPtr nn(n), ee(e);
    if (!n || !e) return openssl_error("cannot read the RSA public key");
    Bytes nb = bn_bytes(n), eb = bn_bytes(e);
    w.string("ssh-rsa");
    w.mpint(eb.data(), eb.size());
    w.mpint(nb.data(), nb.size());
  } else if (EVP_PKEY_is_a(pkey, "ED25519")) {
    uint8_t a[32];
    size_t len = sizeof a;
    if (!EVP_PKEY_get_raw_public_key(pkey, a, &len) || len != sizeof a) return openssl_error("cannot read the Ed25519 key");
    w.string("ssh-ed25519");
    w.string(a, len);
  } else if (EVP_PKEY_is_a(pkey, "RSA-PSS")) {
    return make_error(Reason::kUnsupported,
                      "an RSA-PSS key signs only with PSS, and SSH's RSA signatures are PKCS#1 v1.5");
  } else {
    return make_error(Reason::kUnsupported, "SSH cannot use this key type");
  }
  return w.take();
}

std::string blob_type(const Bytes& blob) {
  SshReader r(blob.data(), blob.size());
  SshView type;
  if (!r.string(&type)) return "";
  return std::string(type.text());
}

Result<Bytes> ssh_sign(EVP_PKEY* pkey, OSSL_LIB_CTX* libctx, const uint8_t* data, size_t size, uint32_t flags,
                       bool allow_sha1) {
  std::string algorithm;
  const char* digest = nullptr;
  const bool ec = EVP_PKEY_is_a(pkey, "EC"), rsa = EVP_PKEY_is_a(pkey, "RSA");
  if (ec) {
    const char* curve = ssh_curve(EVP_PKEY_get_bits(pkey));
    if (!curve) return make_error(Reason::kUnsupported, "SSH has no name for this EC curve");
    algorithm = "ecdsa-sha2-" + std::string(curve);
    digest = curve_digest(EVP_PKEY_get_bits(pkey));
  } else if (rsa) {
    if (flags & kRsaSha2_256) {
      algorithm = "rsa-sha2-256";
      digest = "SHA256";
    } else if (flags & kRsaSha2_512) {
      algorithm = "rsa-sha2-512";
      digest = "SHA512";
    } else if (allow_sha1) {
      algorithm = "ssh-rsa";
      digest = "SHA1";
    } else {
      return make_error(Reason::kUnsupported,
                        "the client asked for an ssh-rsa (SHA-1) signature, which this agent makes only when "
                        "started with --allow-sha1");
    }
  } else if (EVP_PKEY_is_a(pkey, "ED25519")) {
    algorithm = "ssh-ed25519";
  } else {
    return make_error(Reason::kUnsupported, "SSH cannot use this key type");
  }

  EvpMdCtxPtr md(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (!md || EVP_DigestSignInit_ex(md.get(), &pctx, digest, libctx, nullptr, pkey, nullptr) <= 0)
    return openssl_error("cannot start the signature");
  if (rsa && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0) return openssl_error("cannot pick PKCS#1 padding");
  if (digest && std::strcmp(digest, "SHA1") == 0) {  // tpmkey signs SHA-1 only when asked to (provider/params.h)
    int yes = 1;
    OSSL_PARAM allow[] = {OSSL_PARAM_construct_int(kParamAllowSha1, &yes), OSSL_PARAM_construct_end()};
    if (EVP_PKEY_CTX_set_params(pctx, allow) <= 0) return openssl_error("cannot allow SHA-1");
  }
  size_t len = 0;
  if (EVP_DigestSign(md.get(), nullptr, &len, data, size) <= 0) return openssl_error("cannot size the signature");
  Bytes sig(len);
  if (EVP_DigestSign(md.get(), sig.data(), &len, data, size) <= 0) return openssl_error("signing failed");
  sig.resize(len);

  SshWriter inner;
  if (ec) {
    // The provider returns DER (ECDSA-Sig-Value); SSH wants mpint r, mpint s.
    const uint8_t* p = sig.data();
    EcdsaSigPtr es(d2i_ECDSA_SIG(nullptr, &p, long(sig.size())));
    if (!es) return openssl_error("the ECDSA signature is not DER");
    Bytes r = bn_bytes(ECDSA_SIG_get0_r(es.get())), s = bn_bytes(ECDSA_SIG_get0_s(es.get()));
    inner.mpint(r.data(), r.size());
    inner.mpint(s.data(), s.size());
  } else if (rsa) {
    // As long as the modulus (RFC 8332), with leading zeros.
    size_t width = size_t(EVP_PKEY_get_size(pkey));
    if (sig.size() < width) sig.insert(sig.begin(), width - sig.size(), 0);
    inner.raw(sig.data(), sig.size());
  } else {
    inner.raw(sig.data(), sig.size());
  }
  SshWriter out;
  out.string(algorithm);
  out.string(inner.bytes());
  return out.take();
}

Result<PrivateKey> read_private_key(SshReader& r, OSSL_LIB_CTX* libctx) {
  SshView type;
  if (!r.string(&type)) return make_error(Reason::kMalformedKey, "no key type");
  std::string_view t = type.text();
  if (t == "ssh-ed25519") return read_ed25519(r, libctx);
  if (t == "ssh-rsa") return read_rsa(r, libctx);
  if (t.rfind("ecdsa-sha2-", 0) == 0) return read_ecdsa(r, t, libctx);
  return make_error(Reason::kUnsupported,
                    "unsupported key type (Ed25519, ECDSA and RSA keys are; certificates and security keys are not)");
}

Result<EvpPkeyPtr> public_key_from_blob(const Bytes& blob, OSSL_LIB_CTX* libctx) {
  SshReader r(blob.data(), blob.size());
  SshView type;
  if (!r.string(&type)) return make_error(Reason::kMalformedKey, "not a public key blob");
  const std::string_view t = type.text();
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  const char* keytype = nullptr;
  BignumPtr n, e;
  if (t == "ssh-ed25519") {
    SshView a;
    if (!r.string(&a) || a.size != 32 || !r.done()) return make_error(Reason::kMalformedKey, "not an Ed25519 key blob");
    EvpPkeyPtr pkey(EVP_PKEY_new_raw_public_key_ex(libctx, "ED25519", "provider=default", a.data, a.size));
    if (!pkey) return openssl_error("cannot read the Ed25519 key");
    return pkey;
  } else if (t.rfind("ecdsa-sha2-", 0) == 0) {
    SshView curve, q;
    if (!r.string(&curve) || !r.string(&q) || !r.done()) return make_error(Reason::kMalformedKey, "not an ECDSA key blob");
    const char* group = curve_group(curve.text());
    if (!group || t != "ecdsa-sha2-" + std::string(curve.text())) return make_error(Reason::kUnsupported, "unsupported ECDSA curve");
    keytype = "EC";
    if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, q.data, q.size))
      return openssl_error("cannot read the ECDSA key");
  } else if (t == "ssh-rsa") {
    SshView ev, nv;
    if (!r.mpint(&ev) || !r.mpint(&nv) || !r.done()) return make_error(Reason::kMalformedKey, "not an RSA key blob");
    n.reset(BN_bin2bn(nv.data, int(nv.size), nullptr));
    e.reset(BN_bin2bn(ev.data, int(ev.size), nullptr));
    keytype = "RSA";
    if (!bld || !n || !e || !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) ||
        !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()))
      return openssl_error("cannot read the RSA key");
  } else {
    return make_error(Reason::kUnsupported, "unsupported key type");
  }
  return fromdata(libctx, keytype, EVP_PKEY_PUBLIC_KEY, bld.get());
}

bool ssh_verify(const Bytes& key_blob, OSSL_LIB_CTX* libctx, const uint8_t* sig_blob, size_t sig_size,
                const uint8_t* data, size_t size) {
  auto pkey = public_key_from_blob(key_blob, libctx);
  if (!pkey) return false;
  SshReader r(sig_blob, sig_size);
  SshView alg, sig;
  if (!r.string(&alg) || !r.string(&sig) || !r.done()) return false;
  const std::string type = blob_type(key_blob);
  const char* digest = nullptr;
  Bytes raw = sig.bytes();
  if (type == "ssh-ed25519") {
    if (alg.text() != type) return false;
  } else if (type.rfind("ecdsa-sha2-", 0) == 0) {
    if (alg.text() != type) return false;
    digest = curve_digest(EVP_PKEY_get_bits(pkey->get()));
    // mpint r, mpint s to DER.
    SshReader rs(sig.data, sig.size);
    SshView rv, sv;
    if (!rs.mpint(&rv) || !rs.mpint(&sv) || !rs.done()) return false;
    EcdsaSigPtr es(ECDSA_SIG_new());
    BIGNUM* br = BN_bin2bn(rv.data, int(rv.size), nullptr);
    BIGNUM* bs = BN_bin2bn(sv.data, int(sv.size), nullptr);
    if (!es || !br || !bs || !ECDSA_SIG_set0(es.get(), br, bs)) {
      BN_free(br);
      BN_free(bs);
      return false;
    }
    unsigned char* der = nullptr;
    int len = i2d_ECDSA_SIG(es.get(), &der);
    if (len <= 0) return false;
    raw.assign(der, der + len);
    OPENSSL_free(der);
  } else if (type == "ssh-rsa") {
    if (alg.text() == "rsa-sha2-256") digest = "SHA256";
    else if (alg.text() == "rsa-sha2-512") digest = "SHA512";
    else return false;
  } else {
    return false;
  }
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  const bool ok = md && EVP_DigestVerifyInit_ex(md.get(), &pctx, digest, libctx, "provider=default", pkey->get(), nullptr) > 0 &&
                  (type != "ssh-rsa" || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0) &&
                  EVP_DigestVerify(md.get(), raw.data(), raw.size(), data, size) == 1;
  ERR_clear_error();
  return ok;
}

}  // namespace tpmkey::agent
