#include "keystore/public_key.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "keystore/algorithm.h"
#include "keystore/ssh_wire.h"

namespace tpmkey {
namespace {

size_t field_bytes(int bits) { return size_t(bits + 7) / 8; }

void append_padded(Bytes& out, const uint8_t* p, size_t n, size_t width) {
  while (n > width && *p == 0) { ++p; --n; }
  out.insert(out.end(), width > n ? width - n : 0, 0);
  out.insert(out.end(), p, p + n);
}

}  // namespace

Bytes ec_point(const TPMT_PUBLIC& pub) {
  const AlgorithmSpec* s = find_ec_curve(pub.parameters.eccDetail.curveID);
  size_t w = s ? field_bytes(s->bits) : pub.unique.ecc.x.size;
  Bytes out{0x04};
  append_padded(out, pub.unique.ecc.x.buffer, pub.unique.ecc.x.size, w);
  append_padded(out, pub.unique.ecc.y.buffer, pub.unique.ecc.y.size, w);
  return out;
}

uint32_t rsa_exponent(const TPMT_PUBLIC& pub) {
  return pub.parameters.rsaDetail.exponent ? pub.parameters.rsaDetail.exponent : 65537;
}

Result<EvpPkeyPtr> public_pkey(const TPMT_PUBLIC& pub, OSSL_LIB_CTX* libctx) {
  auto spec = spec_of(pub);
  if (!spec) return spec.take_error();
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  BignumPtr n, e;
  Bytes point;
  const char* type = nullptr;
  if ((*spec)->kind == KeyKind::kEc) {
    type = "EC";
    point = ec_point(pub);
    OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, (*spec)->group, 0);
    OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size());
  } else {
    type = (*spec)->kind == KeyKind::kRsaPss ? "RSA-PSS" : "RSA";
    n.reset(BN_bin2bn(pub.unique.rsa.buffer, pub.unique.rsa.size, nullptr));
    e.reset(BN_new());
    BN_set_word(e.get(), rsa_exponent(pub));
    OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get());
    OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get());
    if ((*spec)->kind == KeyKind::kRsaPss) {
      // The restrictions the TPM enforces, as OpenSSL's RSA-PSS parameters: the scheme's hash, MGF1
      // with the same hash, and a salt as long as the digest (what the TPM makes).
      const TPM2_ALG_ID h = pub.parameters.rsaDetail.scheme.details.rsapss.hashAlg;
      if (!hash_size(h) || h == TPM2_ALG_SHA1)
        return make_error(Reason::kUnsupported, std::string("the key is bound to RSA-PSS with ") + hash_name(h) +
                                                    " (tpmkey signs RSA-PSS with SHA-256, SHA-384 or SHA-512)");
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_RSA_DIGEST, hash_name(h), 0);
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_RSA_MGF1_DIGEST, hash_name(h), 0);
      OSSL_PARAM_BLD_push_int(bld.get(), OSSL_PKEY_PARAM_RSA_PSS_SALTLEN, int(hash_size(h)));
    }
  }
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(libctx, type, "provider=default"));
  EVP_PKEY* pkey = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0) {
    ERR_clear_error();
    return make_error(Reason::kMalformedKey, "the key's public area is not a valid public key");
  }
  return EvpPkeyPtr(pkey);
}

Result<Bytes> spki_der(EVP_PKEY* pkey) {
  int n = i2d_PUBKEY(pkey, nullptr);
  if (n <= 0) return make_error(Reason::kInternal, "cannot encode the public key");
  Bytes out(static_cast<size_t>(n));
  uint8_t* p = out.data();
  i2d_PUBKEY(pkey, &p);
  return out;
}

Result<std::string> spki_pem(EVP_PKEY* pkey) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PUBKEY(bio.get(), pkey)) return make_error(Reason::kInternal, "cannot encode the public key");
  char* p = nullptr;
  long n = BIO_get_mem_data(bio.get(), &p);
  return std::string(p, size_t(n));
}

Result<Bytes> openssh_blob(const TPMT_PUBLIC& pub) {
  auto spec = spec_of(pub);
  if (!spec) return spec.take_error();
  if ((*spec)->kind == KeyKind::kRsaPss)
    return make_error(Reason::kUnsupported,
                      "an RSA-PSS key signs only with PSS, and SSH's RSA signatures are PKCS#1 v1.5: it has no OpenSSH "
                      "public key");
  SshWriter blob;
  if ((*spec)->kind == KeyKind::kEc) {
    std::string curve = "nistp" + std::to_string((*spec)->bits);
    blob.string("ecdsa-sha2-" + curve);
    blob.string(curve);
    blob.string(ec_point(pub));
  } else {
    uint32_t e = rsa_exponent(pub);
    uint8_t eb[4] = {uint8_t(e >> 24), uint8_t(e >> 16), uint8_t(e >> 8), uint8_t(e)};
    blob.string("ssh-rsa");
    blob.mpint(eb, 4);
    blob.mpint(pub.unique.rsa.buffer, pub.unique.rsa.size);
  }
  return blob.take();
}

Result<std::string> openssh_public(const TPMT_PUBLIC& pub, const std::string& comment) {
  auto blob = openssh_blob(pub);
  if (!blob) return blob.take_error();
  SshReader r(blob->data(), blob->size());
  SshView type;
  r.string(&type);
  std::string line = std::string(type.text()) + " " + base64(blob->data(), blob->size());
  if (!comment.empty()) line += " " + comment;
  return line;
}

}  // namespace tpmkey
