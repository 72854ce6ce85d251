#include "keystore/tpm/kdf.h"

#include <cstring>

#include <openssl/core_names.h>
#include <tss2/tss2_mu.h>

#include "keystore/algorithm.h"
#include "keystore/public_key.h"

namespace tpmkey {
namespace {

std::span<const uint8_t> label_span(const char* label) {  // with its terminating zero
  return {reinterpret_cast<const uint8_t*>(label), std::strlen(label) + 1};
}

// Both KDFs: counter-mode blocks until `bits` are produced (whole bytes; TPM uses are multiples of 8).
template <typename Block>
SecretBytes counter_kdf(const EVP_MD* md, size_t bits, Block&& block) {
  const size_t want = (bits + 7) / 8, len = size_t(EVP_MD_get_size(md));
  SecretBytes out;
  uint8_t buf[EVP_MAX_MD_SIZE];
  for (uint32_t i = 1; out.size() < want; ++i) {
    uint8_t counter[4];
    put_be32(counter, i);
    if (!block(counter, buf)) {
      out.wipe();
      break;
    }
    out.append(buf, std::min(len, want - out.size()));
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return out;
}

}  // namespace

void put_be32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}

bool digest_parts(const EVP_MD* md, ByteParts parts, uint8_t* out) {
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex2(ctx.get(), md, nullptr) != 1) return false;
  for (auto p : parts)
    if (!p.empty() && EVP_DigestUpdate(ctx.get(), p.data(), p.size()) != 1) return false;
  return EVP_DigestFinal_ex(ctx.get(), out, nullptr) == 1;
}

// HMAC (RFC 2104) built on the prefetched digest: no fetch per call.
bool hmac_parts(const EVP_MD* md, std::span<const uint8_t> key, ByteParts parts, uint8_t* out) {
  const size_t block = size_t(EVP_MD_get_block_size(md));
  const size_t len = size_t(EVP_MD_get_size(md));
  uint8_t k[EVP_MAX_MD_SIZE * 2] = {};  // block sizes of SHA-1/2 are at most 128 = 2 * 64
  if (block > sizeof k) return false;
  bool ok = true;
  if (key.size() > block) ok = digest_parts(md, {key}, k);
  else if (!key.empty()) std::memcpy(k, key.data(), key.size());
  uint8_t ipad[sizeof k], opad[sizeof k], inner[EVP_MAX_MD_SIZE];
  for (size_t i = 0; i < block; ++i) {
    ipad[i] = k[i] ^ 0x36;
    opad[i] = k[i] ^ 0x5c;
  }
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  ok = ok && ctx && EVP_DigestInit_ex2(ctx.get(), md, nullptr) == 1 && EVP_DigestUpdate(ctx.get(), ipad, block) == 1;
  for (auto p : parts) ok = ok && (p.empty() || EVP_DigestUpdate(ctx.get(), p.data(), p.size()) == 1);
  ok = ok && EVP_DigestFinal_ex(ctx.get(), inner, nullptr) == 1 && digest_parts(md, {{opad, block}, {inner, len}}, out);
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(ipad, sizeof ipad);
  OPENSSL_cleanse(opad, sizeof opad);
  OPENSSL_cleanse(inner, sizeof inner);
  return ok;
}

Result<Bytes> object_name(const Crypto& c, const TPMT_PUBLIC& pub) {
  const EVP_MD* md = c.md(pub.nameAlg);
  if (!md) return make_error(Reason::kUnsupported, "object name algorithm is not SHA-1/256/384/512");
  uint8_t buf[sizeof(TPMT_PUBLIC)];
  size_t off = 0;
  TSS2_RC rc = Tss2_MU_TPMT_PUBLIC_Marshal(&pub, buf, sizeof buf, &off);
  if (rc != TSS2_RC_SUCCESS) return tss_error("marshal public area", rc);
  Bytes name(2 + size_t(EVP_MD_get_size(md)));
  name[0] = uint8_t(pub.nameAlg >> 8);
  name[1] = uint8_t(pub.nameAlg);
  if (!digest_parts(md, {{buf, off}}, name.data() + 2))
    return make_error(Reason::kInternal, "hashing a public area failed");
  return name;
}

Bytes handle_name(TPM2_HANDLE h) {
  Bytes b(4);
  put_be32(b.data(), h);
  return b;
}

SecretBytes kdfa(const Crypto& c, TPM2_ALG_ID hash, const SecretBytes& key, const char* label,
                 std::span<const uint8_t> u, std::span<const uint8_t> v, size_t bits) {
  const EVP_MD* md = c.md(hash);
  if (!md) return {};
  uint8_t len[4];
  put_be32(len, uint32_t(bits));
  return counter_kdf(md, bits, [&](const uint8_t* counter, uint8_t* out) {
    return hmac_parts(md, span_of(key), {{counter, 4}, label_span(label), u, v, {len, 4}}, out);
  });
}

SecretBytes kdfe(const Crypto& c, TPM2_ALG_ID hash, const SecretBytes& z, const char* label,
                 std::span<const uint8_t> u, std::span<const uint8_t> v, size_t bits) {
  const EVP_MD* md = c.md(hash);
  if (!md) return {};
  return counter_kdf(md, bits, [&](const uint8_t* counter, uint8_t* out) {
    return digest_parts(md, {{counter, 4}, span_of(z), label_span(label), u, v}, out);
  });
}

Result<SharedSecret> ecdh_share(const Crypto& c, const TPMT_PUBLIC& key, const char* label) {
  const std::string what = "share a secret with the storage root key";
  const AlgorithmSpec* curve = key.type == TPM2_ALG_ECC ? find_ec_curve(key.parameters.eccDetail.curveID) : nullptr;
  const size_t seed_bits = hash_size(key.nameAlg) * 8;
  if (!curve || !seed_bits) return make_error(Reason::kUnsupported, "the key is not a supported ECC key").context(what);
  auto peer = public_pkey(key, c.libctx());
  if (!peer) return peer.take_error().context(what);
  // The ephemeral key takes its group from the peer rather than from the curve's name.
  EvpPkeyCtxPtr gctx(EVP_PKEY_CTX_new_from_pkey(c.libctx(), peer->get(), "provider=default"));
  EVP_PKEY* generated = nullptr;
  if (!gctx || EVP_PKEY_keygen_init(gctx.get()) != 1 || EVP_PKEY_keygen(gctx.get(), &generated) != 1)
    return make_error(Reason::kInternal, "cannot generate an ephemeral ECDH key").context(what);
  EvpPkeyPtr eph(generated);
  EvpPkeyCtxPtr dctx(EVP_PKEY_CTX_new_from_pkey(c.libctx(), eph.get(), "provider=default"));
  size_t zlen = 0;
  // No second check of the peer (0): decoding its point already checked that it is on the curve,
  // which for the TPM's curves (all of cofactor 1) is the whole public-key check but for the
  // multiplication by the group order that EVP_PKEY_derive_set_peer would add.
  if (!dctx || EVP_PKEY_derive_init(dctx.get()) != 1 || EVP_PKEY_derive_set_peer_ex(dctx.get(), peer->get(), 0) != 1 ||
      EVP_PKEY_derive(dctx.get(), nullptr, &zlen) != 1)
    return make_error(Reason::kInternal, "ECDH with the storage root key failed").context(what);
  Bytes zbuf(zlen);
  if (EVP_PKEY_derive(dctx.get(), zbuf.data(), &zlen) != 1)
    return make_error(Reason::kInternal, "ECDH with the storage root key failed").context(what);
  SecretBytes z(zbuf.data(), zlen);
  OPENSSL_cleanse(zbuf.data(), zbuf.size());

  uint8_t point[1 + 2 * 66];
  size_t plen = 0;
  if (EVP_PKEY_get_octet_string_param(eph.get(), OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, sizeof point, &plen) != 1 ||
      plen < 3 || point[0] != 0x04)
    return make_error(Reason::kInternal, "cannot read the ephemeral ECDH key").context(what);
  const size_t field = (plen - 1) / 2;
  TPMS_ECC_POINT q{};
  q.x.size = q.y.size = uint16_t(field);
  std::memcpy(q.x.buffer, point + 1, field);
  std::memcpy(q.y.buffer, point + 1 + field, field);

  SharedSecret s;
  s.value = kdfe(c, key.nameAlg, z, label, {q.x.buffer, q.x.size}, {key.unique.ecc.x.buffer, key.unique.ecc.x.size},
                 seed_bits);
  if (s.value.empty()) return make_error(Reason::kInternal, "KDFe failed").context(what);
  size_t off = 0;
  TSS2_RC rc = Tss2_MU_TPMS_ECC_POINT_Marshal(&q, s.encrypted.secret, sizeof s.encrypted.secret, &off);
  if (rc != TSS2_RC_SUCCESS) return tss_error(what, rc);
  s.encrypted.size = uint16_t(off);
  return s;
}

}  // namespace tpmkey
