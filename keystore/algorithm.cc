#include "keystore/algorithm.h"

#include <strings.h>

#include <cstdio>

namespace tpmkey {
namespace {

constexpr AlgorithmSpec kAlgorithms[] = {
    {"ec-p256", KeyKind::kEc, 256, TPM2_ECC_NIST_P256, "P-256"},
    {"ec-p384", KeyKind::kEc, 384, TPM2_ECC_NIST_P384, "P-384"},
    {"ec-p521", KeyKind::kEc, 521, TPM2_ECC_NIST_P521, "P-521"},
    {"rsa2048", KeyKind::kRsa, 2048, TPM2_ECC_NONE, nullptr},
    {"rsa3072", KeyKind::kRsa, 3072, TPM2_ECC_NONE, nullptr},
    {"rsa4096", KeyKind::kRsa, 4096, TPM2_ECC_NONE, nullptr},
    {"rsa-pss2048", KeyKind::kRsaPss, 2048, TPM2_ECC_NONE, nullptr},
    {"rsa-pss3072", KeyKind::kRsaPss, 3072, TPM2_ECC_NONE, nullptr},
    {"rsa-pss4096", KeyKind::kRsaPss, 4096, TPM2_ECC_NONE, nullptr},
    {"rsa1024", KeyKind::kRsa, 1024, TPM2_ECC_NONE, nullptr, true},
    {"rsa-pss1024", KeyKind::kRsaPss, 1024, TPM2_ECC_NONE, nullptr, true},
};

// Other spellings find_algorithm accepts.
struct AlgorithmAlias {
  const char* alias;
  const char* name;
};
constexpr AlgorithmAlias kAlgorithmAliases[] = {{"rsa-pss", "rsa-pss2048"}};

struct GroupAlias {
  const char* alias;
  TPM2_ECC_CURVE curve;
};
constexpr GroupAlias kGroupAliases[] = {
    {"P-256", TPM2_ECC_NIST_P256}, {"prime256v1", TPM2_ECC_NIST_P256}, {"secp256r1", TPM2_ECC_NIST_P256},
    {"P-384", TPM2_ECC_NIST_P384}, {"secp384r1", TPM2_ECC_NIST_P384},
    {"P-521", TPM2_ECC_NIST_P521}, {"secp521r1", TPM2_ECC_NIST_P521},
};

struct HashInfo {
  TPM2_ALG_ID alg;
  const char* name;
  size_t size;
  const char* aliases[2];
};
constexpr HashInfo kHashes[] = {
    {TPM2_ALG_SHA1, "SHA1", 20, {"SHA-1", "SHA1"}},
    {TPM2_ALG_SHA256, "SHA256", 32, {"SHA2-256", "SHA-256"}},
    {TPM2_ALG_SHA384, "SHA384", 48, {"SHA2-384", "SHA-384"}},
    {TPM2_ALG_SHA512, "SHA512", 64, {"SHA2-512", "SHA-512"}},
};

}  // namespace

std::span<const AlgorithmSpec> all_algorithms() { return kAlgorithms; }

namespace {
bool same_name(const char* a, std::string_view b) {
  return b.size() == std::char_traits<char>::length(a) && strncasecmp(a, b.data(), b.size()) == 0;
}
}  // namespace

const AlgorithmSpec* find_algorithm(std::string_view name) {
  for (const auto& al : kAlgorithmAliases)
    if (same_name(al.alias, name)) name = al.name;
  for (const auto& a : kAlgorithms)
    if (same_name(a.name, name)) return &a;
  return nullptr;
}

const AlgorithmSpec* find_ec_curve(TPM2_ECC_CURVE curve) {
  for (const auto& a : kAlgorithms)
    if (a.kind == KeyKind::kEc && a.curve == curve) return &a;
  return nullptr;
}

const AlgorithmSpec* find_ec_group(std::string_view group) {
  for (const auto& g : kGroupAliases)
    if (group.size() == std::char_traits<char>::length(g.alias) && strncasecmp(g.alias, group.data(), group.size()) == 0)
      return find_ec_curve(g.curve);
  return nullptr;
}

const AlgorithmSpec* find_rsa_bits(int bits) {
  for (const auto& a : kAlgorithms)
    if (a.kind == KeyKind::kRsa && a.bits == bits) return &a;
  return nullptr;
}

const AlgorithmSpec* find_rsa_pss_bits(int bits) {
  for (const auto& a : kAlgorithms)
    if (a.kind == KeyKind::kRsaPss && a.bits == bits) return &a;
  return nullptr;
}

Result<const AlgorithmSpec*> spec_of(const TPMT_PUBLIC& pub) {
  const AlgorithmSpec* s = nullptr;
  if (pub.type == TPM2_ALG_ECC) s = find_ec_curve(pub.parameters.eccDetail.curveID);
  else if (pub.type == TPM2_ALG_RSA && pub.parameters.rsaDetail.scheme.scheme == TPM2_ALG_RSAPSS)
    s = find_rsa_pss_bits(pub.parameters.rsaDetail.keyBits);
  else if (pub.type == TPM2_ALG_RSA) s = find_rsa_bits(pub.parameters.rsaDetail.keyBits);
  if (!s) return make_error(Reason::kUnsupported, "the key's algorithm is not one tpmkey supports");
  return s;
}

unsigned usage_of(const TPMT_PUBLIC& pub) {
  if (pub.objectAttributes & TPMA_OBJECT_RESTRICTED) {
    // A restricted decrypt key is a storage parent, not a key for data; a restricted signing
    // key signs what the TPM hashed.
    return (pub.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) ? kUsageSign : 0;
  }
  unsigned u = 0;
  if (pub.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) u |= kUsageSign;
  if (pub.objectAttributes & TPMA_OBJECT_DECRYPT) u |= kUsageDecrypt;
  return u;
}

std::string usage_text(unsigned usage) {
  switch (usage & kUsageSignDecrypt) {
    case kUsageSign: return "sign";
    case kUsageDecrypt: return "decrypt";
    case kUsageSignDecrypt: return "sign,decrypt";
    default: return "none";
  }
}

unsigned parse_usage(std::string_view text) {
  unsigned u = 0;
  while (true) {
    const size_t comma = text.find(',');
    const std::string_view word = text.substr(0, comma);
    if (word == "sign") u |= kUsageSign;
    else if (word == "decrypt") u |= kUsageDecrypt;
    else return 0;
    if (comma == std::string_view::npos) return u;
    text.remove_prefix(comma + 1);
  }
}

TPMT_SIG_SCHEME tpm_scheme(const SignScheme& s) {
  TPMT_SIG_SCHEME t{};
  t.scheme = s.alg == SigAlg::kEcdsa ? TPM2_ALG_ECDSA : s.alg == SigAlg::kRsaPkcs1 ? TPM2_ALG_RSASSA : TPM2_ALG_RSAPSS;
  t.details.any.hashAlg = s.hash;
  return t;
}

SignScheme default_scheme(KeyKind kind, TPM2_ALG_ID hash) {
  return {kind == KeyKind::kEc ? SigAlg::kEcdsa : kind == KeyKind::kRsaPss ? SigAlg::kRsaPss : SigAlg::kRsaPkcs1, hash};
}

Result<std::optional<SignScheme>> bound_scheme(const TPMT_PUBLIC& pub) {
  const bool rsa = pub.type == TPM2_ALG_RSA;
  const TPMT_RSA_SCHEME& rs = pub.parameters.rsaDetail.scheme;
  const TPMT_ECC_SCHEME& es = pub.parameters.eccDetail.scheme;
  const TPM2_ALG_ID alg = rsa ? rs.scheme : es.scheme;
  const TPM2_ALG_ID hash = rsa ? rs.details.anySig.hashAlg : es.details.anySig.hashAlg;
  if (alg == TPM2_ALG_NULL) return std::optional<SignScheme>();
  if (!rsa && alg == TPM2_ALG_ECDSA) return std::optional<SignScheme>(SignScheme{SigAlg::kEcdsa, hash});
  if (rsa && alg == TPM2_ALG_RSASSA) return std::optional<SignScheme>(SignScheme{SigAlg::kRsaPkcs1, hash});
  if (rsa && alg == TPM2_ALG_RSAPSS) return std::optional<SignScheme>(SignScheme{SigAlg::kRsaPss, hash});
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%04x", alg);
  return make_error(Reason::kUnsupported,
                    std::string("the key is bound to TPM scheme ") + buf + ", which is not a signature scheme tpmkey uses");
}

TPM2B_PUBLIC key_template(const KeyOptions& opts) {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& p = t.publicArea;
  p.nameAlg = opts.name_alg;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                       TPMA_OBJECT_USERWITHAUTH;
  if (opts.usage & kUsageSign) p.objectAttributes |= TPMA_OBJECT_SIGN_ENCRYPT;
  if (opts.usage & kUsageDecrypt) p.objectAttributes |= TPMA_OBJECT_DECRYPT;
  if (!opts.with_auth) p.objectAttributes |= TPMA_OBJECT_NODA;
  if (opts.spec->kind == KeyKind::kEc) {
    p.type = TPM2_ALG_ECC;
    p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    p.parameters.eccDetail.curveID = opts.spec->curve;
    p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  } else {
    p.type = TPM2_ALG_RSA;
    p.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
    if (opts.spec->kind == KeyKind::kRsaPss) {
      // The TPM refuses a scheme on a key that also decrypts: an RSA-PSS key only signs.
      p.objectAttributes &= ~TPMA_OBJECT(TPMA_OBJECT_DECRYPT);
      p.objectAttributes |= TPMA_OBJECT_SIGN_ENCRYPT;
      p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSAPSS;
      p.parameters.rsaDetail.scheme.details.rsapss.hashAlg = opts.pss_hash;
    }
    p.parameters.rsaDetail.keyBits = TPM2_KEY_BITS(opts.spec->bits);
    p.parameters.rsaDetail.exponent = opts.rsa_exponent == 65537 ? 0 : opts.rsa_exponent;
  }
  return t;
}

TPM2B_PUBLIC import_template(const KeyOptions& opts) {
  TPM2B_PUBLIC t = key_template(opts);
  t.publicArea.objectAttributes &=
      ~TPMA_OBJECT(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN);
  return t;
}

TPM2B_PUBLIC srk_template() {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED |
                       TPMA_OBJECT_DECRYPT;
  p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
  p.parameters.eccDetail.symmetric.keyBits.aes = 128;
  p.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  return t;  // unique left empty, as the other TPM key-file tools do
}

TPM2_ALG_ID hash_for_digest_size(size_t len) {
  for (const auto& h : kHashes)
    if (h.size == len) return h.alg;
  return TPM2_ALG_ERROR;
}

TPM2_ALG_ID hash_from_name(std::string_view n) {
  for (const auto& h : kHashes) {
    for (const char* cand : {h.name, h.aliases[0], h.aliases[1]})
      if (n.size() == std::char_traits<char>::length(cand) && strncasecmp(cand, n.data(), n.size()) == 0)
        return h.alg;
  }
  return TPM2_ALG_ERROR;
}

const char* hash_name(TPM2_ALG_ID alg) {
  for (const auto& h : kHashes)
    if (h.alg == alg) return h.name;
  return "unknown";
}

size_t hash_size(TPM2_ALG_ID alg) {
  for (const auto& h : kHashes)
    if (h.alg == alg) return h.size;
  return 0;
}

}  // namespace tpmkey
