#include "keystore/tpm_wire.h"

#include <cstring>

namespace tpmkey {
namespace {

// Big-endian fields off the front of a buffer; after the first failure every read fails.
class Wire {
 public:
  Wire(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool u16(uint16_t* v) {
    if (!take(2)) return false;
    *v = uint16_t(p_[-2] << 8 | p_[-1]);
    return true;
  }
  bool u32(uint32_t* v) {
    if (!take(4)) return false;
    *v = uint32_t(p_[-4]) << 24 | uint32_t(p_[-3]) << 16 | uint32_t(p_[-2]) << 8 | p_[-1];
    return true;
  }
  // A TPM2B: its size (at most `capacity`), then that many bytes into `buffer`.
  bool sized(uint16_t* size, uint8_t* buffer, size_t capacity) {
    if (!u16(size) || *size > capacity || !take(*size)) return false;
    std::memcpy(buffer, p_ - *size, *size);
    return true;
  }
  template <typename T>
  bool tpm2b(T* t) {
    return sized(&t->size, t->buffer, sizeof t->buffer);
  }
  size_t left() const { return n_; }

 private:
  bool take(size_t k) {
    if (failed_ || k > n_) return !(failed_ = true);
    p_ += k;
    n_ -= k;
    return true;
  }
  const uint8_t* p_;
  size_t n_;
  bool failed_ = false;
};

// TPMT_SYM_DEF_OBJECT: TPM_ALG_NULL, or a block cipher with its key size and mode.
bool sym_def_object(Wire& w, TPMT_SYM_DEF_OBJECT* s) {
  if (!w.u16(&s->algorithm)) return false;
  switch (s->algorithm) {
    case TPM2_ALG_NULL: return true;
    case TPM2_ALG_AES:
    case TPM2_ALG_SM4:
    case TPM2_ALG_CAMELLIA: return w.u16(&s->keyBits.sym) && w.u16(&s->mode.sym);
    default: return false;
  }
}

// TPMU_ASYM_SCHEME's details for `scheme`, one of those an RSA (`rsa`) or an ECC key may name.
bool asym_scheme(Wire& w, uint16_t scheme, bool rsa, TPMU_ASYM_SCHEME* d) {
  switch (scheme) {
    case TPM2_ALG_NULL: return true;
    case TPM2_ALG_RSAES: return rsa;
    case TPM2_ALG_RSASSA:
    case TPM2_ALG_RSAPSS:
    case TPM2_ALG_OAEP: return rsa && w.u16(&d->anySig.hashAlg);
    case TPM2_ALG_ECDSA:
    case TPM2_ALG_ECDH:
    case TPM2_ALG_SM2:
    case TPM2_ALG_ECSCHNORR:
    case TPM2_ALG_ECMQV: return !rsa && w.u16(&d->anySig.hashAlg);
    case TPM2_ALG_ECDAA: return !rsa && w.u16(&d->ecdaa.hashAlg) && w.u16(&d->ecdaa.count);
    default: return false;
  }
}

bool kdf_scheme(Wire& w, TPMT_KDF_SCHEME* k) {
  if (!w.u16(&k->scheme)) return false;
  switch (k->scheme) {
    case TPM2_ALG_NULL: return true;
    case TPM2_ALG_MGF1:
    case TPM2_ALG_KDF1_SP800_56A:
    case TPM2_ALG_KDF1_SP800_108: return w.u16(&k->details.mgf1.hashAlg);  // not KDF2: tss2-mu has none
    default: return false;
  }
}

bool keyed_hash_scheme(Wire& w, TPMT_KEYEDHASH_SCHEME* s) {
  if (!w.u16(&s->scheme)) return false;
  switch (s->scheme) {
    case TPM2_ALG_NULL: return true;
    case TPM2_ALG_HMAC: return w.u16(&s->details.hmac.hashAlg);
    case TPM2_ALG_XOR: return w.u16(&s->details.exclusiveOr.hashAlg) && w.u16(&s->details.exclusiveOr.kdf);
    default: return false;
  }
}

// TPMT_PUBLIC, with the parameters and unique field its type selects.
bool public_area(Wire& w, TPMT_PUBLIC* p) {
  if (!w.u16(&p->type) || !w.u16(&p->nameAlg) || !w.u32(&p->objectAttributes) || !w.tpm2b(&p->authPolicy))
    return false;
  switch (p->type) {
    case TPM2_ALG_RSA: {
      TPMS_RSA_PARMS& r = p->parameters.rsaDetail;
      return sym_def_object(w, &r.symmetric) && w.u16(&r.scheme.scheme) &&
             asym_scheme(w, r.scheme.scheme, true, &r.scheme.details) && w.u16(&r.keyBits) && w.u32(&r.exponent) &&
             w.tpm2b(&p->unique.rsa);
    }
    case TPM2_ALG_ECC: {
      TPMS_ECC_PARMS& e = p->parameters.eccDetail;
      return sym_def_object(w, &e.symmetric) && w.u16(&e.scheme.scheme) &&
             asym_scheme(w, e.scheme.scheme, false, &e.scheme.details) && w.u16(&e.curveID) &&
             kdf_scheme(w, &e.kdf) && w.tpm2b(&p->unique.ecc.x) && w.tpm2b(&p->unique.ecc.y);
    }
    case TPM2_ALG_KEYEDHASH:
      return keyed_hash_scheme(w, &p->parameters.keyedHashDetail.scheme) && w.tpm2b(&p->unique.keyedHash);
    case TPM2_ALG_SYMCIPHER: return sym_def_object(w, &p->parameters.symDetail.sym) && w.tpm2b(&p->unique.sym);
    default: return false;
  }
}

}  // namespace

bool read_tpm2b_public(const uint8_t* data, size_t size, TPM2B_PUBLIC* out) {
  Wire outer(data, size);
  if (!outer.u16(&out->size) || out->size != outer.left()) return false;
  Wire inner(data + 2, out->size);
  return public_area(inner, &out->publicArea) && inner.left() == 0;
}

bool read_tpm2b_private(const uint8_t* data, size_t size, TPM2B_PRIVATE* out) {
  Wire w(data, size);
  return w.tpm2b(out) && w.left() == 0;
}

}  // namespace tpmkey
