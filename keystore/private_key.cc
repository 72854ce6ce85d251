#include "keystore/private_key.h"

#include <cstdio>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/x509.h>

#include "keystore/files.h"
#include "keystore/keyfile.h"
#include "keystore/openssh_decrypt.h"
#include "keystore/openssh_key.h"

namespace tpmkey {
namespace {

using DecoderCtxPtr = OsslPtr<OSSL_DECODER_CTX, OSSL_DECODER_CTX_free>;
using SecretBnPtr = OsslPtr<BIGNUM, BN_clear_free>;

// The file's bytes, wiped when done with: an unencrypted key file is the private key itself.
class FileData {
 public:
  explicit FileData(std::string s) : s_(std::move(s)) {}
  FileData(const FileData&) = delete;
  FileData& operator=(const FileData&) = delete;
  ~FileData() { OPENSSL_cleanse(s_.data(), s_.size()); }
  std::string_view view() const { return s_; }
  const uint8_t* bytes() const { return reinterpret_cast<const uint8_t*>(s_.data()); }

 private:
  std::string s_;
};

Result<std::shared_ptr<FileData>> read_source(const std::string& path) {
  auto data = read_small_file(path, kMaxKeyFileSize, Symlinks::kFollow);
  if (!data) return data.take_error();
  auto out = std::make_shared<FileData>(std::move(*data));
  if (out->view().empty()) return make_error(Reason::kMalformedKey, "the file is empty").context("read(" + path + ")");
  return out;
}

struct PemBlock {
  std::string label;
  size_t begin = 0;               // offset of its BEGIN line
  bool legacy_encrypted = false;  // "Proc-Type: 4,ENCRYPTED" in its headers
};

// The PEM blocks of a text file: every "-----BEGIN LABEL-----" at the start of a line.
std::vector<PemBlock> pem_blocks(std::string_view d) {
  static constexpr std::string_view kBegin = "-----BEGIN ";
  std::vector<PemBlock> out;
  for (size_t pos = d.find(kBegin); pos != std::string_view::npos; pos = d.find(kBegin, pos + 1)) {
    if (pos != 0 && d[pos - 1] != '\n') continue;
    const size_t start = pos + kBegin.size();
    const size_t eol = std::min(d.find('\n', start), d.size());
    const size_t close = d.find("-----", start);
    if (close == std::string_view::npos || close > eol) continue;
    PemBlock b;
    b.label = std::string(d.substr(start, close - start));
    b.begin = pos;
    // Legacy encryption is announced in the headers, before the first blank line.
    const size_t body_start = std::min(eol + 1, d.size());
    const size_t end = std::min(d.find("-----END ", body_start), d.size());
    const std::string_view body = d.substr(body_start, end - body_start);
    const std::string_view headers = body.substr(0, std::min(body.find("\n\n"), body.size()));
    b.legacy_encrypted = headers.find("Proc-Type: 4,ENCRYPTED") != std::string_view::npos;
    out.push_back(std::move(b));
  }
  return out;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

const PemBlock* first_private_block(const std::vector<PemBlock>& blocks) {
  for (const auto& b : blocks)
    if (ends_with(b.label, "PRIVATE KEY")) return &b;
  return nullptr;
}

Error not_private(const std::string& path, const std::string& what) {
  return make_error(Reason::kMalformedKey,
                    "the file holds " + what + ", not a private key: import needs the private key")
      .context("read(" + path + ")");
}

// The passphrase callback's state: the source is asked once, on the decoder's first request.
struct PassState {
  const PassphraseSource* source = nullptr;
  bool asked = false;
  std::optional<SecretBytes> pass;
  std::optional<Error> error;
};

int passphrase_cb(char* buf, size_t size, size_t* len, const OSSL_PARAM[], void* arg) {
  auto* st = static_cast<PassState*>(arg);
  if (!st->asked) {
    st->asked = true;
    if (!st->source || !*st->source) {
      st->error = make_error(Reason::kAuthFailed, "the file is encrypted and no passphrase was given");
    } else if (auto r = (*st->source)(); r) {
      st->pass = std::move(*r);
    } else {
      st->error = r.take_error();
    }
  }
  if (!st->pass) return 0;
  if (st->pass->size() > size) {
    st->error = make_error(Reason::kInvalidArgument, "the passphrase is longer than OpenSSL takes");
    return 0;
  }
  if (!st->pass->empty()) std::memcpy(buf, st->pass->data(), st->pass->size());
  *len = st->pass->size();
  return 1;
}

// OSSL_DECODER for `selection` from `data`; nullptr if nothing decoded.
EvpPkeyPtr decode(const Crypto& c, const char* input, int selection, std::string_view data, PassState* st) {
  EVP_PKEY* raw = nullptr;
  DecoderCtxPtr dctx(OSSL_DECODER_CTX_new_for_pkey(&raw, input, nullptr, nullptr, selection, c.libctx(),
                                                   "provider=default"));
  if (!dctx) return nullptr;
  if (st) OSSL_DECODER_CTX_set_passphrase_cb(dctx.get(), passphrase_cb, st);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(data.data());
  size_t len = data.size();
  if (OSSL_DECODER_from_data(dctx.get(), &p, &len) != 1) {
    EVP_PKEY_free(raw);
    return nullptr;
  }
  return EvpPkeyPtr(raw);
}

std::string pem_format(const PemBlock& b) {
  std::string f;
  if (b.label == "RSA PRIVATE KEY") f = "PKCS#1 PEM";
  else if (b.label == "EC PRIVATE KEY") f = "SEC1 PEM";
  else if (b.label == "PRIVATE KEY") f = "PKCS#8 PEM";
  else if (b.label == "ENCRYPTED PRIVATE KEY") f = "encrypted PKCS#8 PEM";
  else f = "PEM \"" + b.label + "\"";
  if (b.legacy_encrypted) f += ", legacy PEM encryption";
  return f;
}

std::string der_format(const SoftwareKey& k, std::string_view data) {
  if (k.encrypted) return "encrypted PKCS#8 DER";
  const unsigned char* p = reinterpret_cast<const unsigned char*>(data.data());
  if (PKCS8_PRIV_KEY_INFO* p8 = d2i_PKCS8_PRIV_KEY_INFO(nullptr, &p, long(data.size()))) {
    PKCS8_PRIV_KEY_INFO_free(p8);
    return "PKCS#8 DER";
  }
  ERR_clear_error();
  if (EVP_PKEY_is_a(k.pkey.get(), "RSA")) return "PKCS#1 DER";
  if (EVP_PKEY_is_a(k.pkey.get(), "EC")) return "SEC1 DER";
  return "DER";
}

// "an Ed25519 key": for messages.
std::string key_type_phrase(EVP_PKEY* pkey) {
  const char* t = EVP_PKEY_get0_type_name(pkey);
  const std::string name = t ? t : "unknown";
  if (name == "ED25519") return "an Ed25519 key";
  if (name == "ED448") return "an Ed448 key";
  if (name == "X25519") return "an X25519 key";
  if (name == "X448") return "an X448 key";
  if (name == "EC" || name == "RSA") return "an " + name + " key";
  return "a " + name + " key";
}

// A passphrase-protected OpenSSH key: ssh-keygen turns a copy into encrypted PKCS#8 under a random
// passphrase (keystore/openssh_decrypt.h), which OpenSSL's decoders open here, in memory; the key
// must be the one whose public half the file shows.
Result<EvpPkeyPtr> read_encrypted_openssh(const Crypto& c, std::string_view text, const OpenSshHeader& header,
                                          const std::string& path, const PassphraseSource& passphrase) {
  if (!passphrase) return make_error(Reason::kAuthFailed, "the file is encrypted and no passphrase was given");
  auto pass = passphrase();
  if (!pass) return pass.take_error();
  auto pkcs8 = decrypt_with_ssh_keygen(c, text, *pass, path);
  if (!pkcs8) return pkcs8.take_error();
  PassState st;
  st.asked = true;
  st.pass = std::move(pkcs8->passphrase);
  const std::string_view pem(reinterpret_cast<const char*>(pkcs8->pem.data()), pkcs8->pem.size());
  EvpPkeyPtr pkey = decode(c, "PEM", EVP_PKEY_KEYPAIR, pem, &st);
  ERR_clear_error();
  if (!pkey) return make_error(Reason::kInternal, "the PKCS#8 key that ssh-keygen wrote does not decode");
  TPMKEY_TRY(check_openssh_public_key(header, pkey.get()));
  return pkey;
}

}  // namespace

const char* const kWhatImports =
    "tpmkey imports RSA keys of 2048, 3072 and 4096 bits and EC keys on P-256, P-384 and P-521, as far as the TPM "
    "supports them";

namespace {

SecretBnPtr bn_param(EVP_PKEY* pkey, const char* name) {
  BIGNUM* b = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, name, &b) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  return SecretBnPtr(b);
}

// `b` big-endian, left-padded to `n` bytes, into a TPM2B buffer.
template <typename T>
bool put_padded(const BIGNUM* b, size_t n, T* out) {
  if (n > sizeof out->buffer || size_t(BN_num_bytes(b)) > n) return false;
  out->size = uint16_t(n);
  return BN_bn2binpad(b, out->buffer, int(n)) == int(n);
}

Result<SecretBytes> secret_of(const BIGNUM* b, size_t n) {
  uint8_t buf[TPM2_MAX_RSA_KEY_BYTES];
  if (n > sizeof buf || size_t(BN_num_bytes(b)) > n || BN_bn2binpad(b, buf, int(n)) != int(n))
    return make_error(Reason::kMalformedKey, "the private value does not fit the key's size");
  SecretBytes s(buf, n);
  OPENSSL_cleanse(buf, sizeof buf);
  return s;
}

}  // namespace

Result<KeyFileKind> identify_key_file(const std::string& path) {
  auto data = read_source(path);
  if (!data) return data.take_error();
  const std::string_view d = (*data)->view();
  const auto blocks = pem_blocks(d);
  if (!blocks.empty()) {
    const PemBlock* b = first_private_block(blocks);
    if (b && b->label == kTss2PemLabel) return KeyFileKind::kTss2;
    if (b && b->label == kOpenSshPemLabel) return KeyFileKind::kOpenSsh;
    return KeyFileKind::kOther;
  }
  if (looks_like_tss2_der((*data)->bytes(), d.size())) return KeyFileKind::kTss2;
  return KeyFileKind::kOther;
}

Result<SoftwareKey> read_private_key(const Crypto& c, const std::string& path, const PassphraseSource& passphrase) {
  const std::string what = "read(" + path + ")";
  auto file = read_source(path);
  if (!file) return file.take_error();
  const std::string_view d = (*file)->view();
  const auto blocks = pem_blocks(d);
  const PemBlock* block = nullptr;
  if (!blocks.empty()) {
    block = first_private_block(blocks);
    if (!block) {
      const std::string& l = blocks.front().label;
      if (ends_with(l, "PUBLIC KEY")) return not_private(path, "a public key (PEM \"" + l + "\")");
      if (l.find("CERTIFICATE") != std::string::npos) return not_private(path, "a certificate (PEM \"" + l + "\")");
      return not_private(path, "no private key (PEM \"" + l + "\")");
    }
    if (block->label == kOpenSshPemLabel) {
      const std::string_view text = d.substr(block->begin);
      auto header = read_openssh_header(text);
      if (!header) return header.take_error().context(what);
      SoftwareKey out;
      if (header->encrypted) {
        auto key = read_encrypted_openssh(c, text, *header, path, passphrase);
        if (!key) return key.take_error().context(what);
        out.pkey = std::move(*key);
        out.format = "encrypted OpenSSH format, " + header->cipher + " with bcrypt, decrypted by ssh-keygen";
        out.encrypted = true;
        return out;
      }
      auto pkey = read_openssh_private_key(c, text);
      if (!pkey) return pkey.take_error().context(what);
      out.pkey = std::move(*pkey);
      out.format = "OpenSSH format";
      return out;
    }
    if (block->label == kTss2PemLabel)
      return make_error(Reason::kInvalidArgument, "this is a TPM key file (TSS2 PRIVATE KEY), not a software key")
          .context(what);
  } else {
    if (looks_like_tss2_der((*file)->bytes(), d.size()))
      return make_error(Reason::kInvalidArgument, "this is a TPM key file (TSS2 PRIVATE KEY), not a software key")
          .context(what);
    for (const char* p : {"ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"})
      if (starts_with(d, p)) return not_private(path, "an OpenSSH public key");
    if (starts_with(d, "PuTTY-User-Key-File-"))
      return make_error(Reason::kUnsupported, "this is a PuTTY key file, which tpmkey does not read: convert a copy "
                                              "to PEM first (puttygen " + path + " -O private-openssh -o COPY)")
          .context(what);
  }

  PassState st;
  st.source = &passphrase;
  const std::string_view input = block ? d.substr(block->begin) : d;
  SoftwareKey out;
  out.pkey = decode(c, block ? "PEM" : "DER", EVP_PKEY_KEYPAIR, input, &st);
  ERR_clear_error();  // the decoders' own complaints are summed up below
  if (!out.pkey) {
    if (st.error) return Error(*st.error).context(what);
    if (st.asked)
      return make_error(Reason::kAuthFailed, "the passphrase is wrong (or the encrypted key is damaged)").context(what);
    if (!block) {
      // DER says nothing about itself: tell a public key or a certificate from the rest.
      if (decode(c, "DER", EVP_PKEY_PUBLIC_KEY, d, nullptr)) {
        ERR_clear_error();
        return not_private(path, "a public key (DER)");
      }
      const unsigned char* p = (*file)->bytes();
      if (X509* x = d2i_X509(nullptr, &p, long(d.size()))) {
        X509_free(x);
        return not_private(path, "a certificate (DER)");
      }
      ERR_clear_error();
      return make_error(Reason::kMalformedKey,
                        "not a private key OpenSSL can read (damaged, or not PEM or DER PKCS#1, SEC1 or PKCS#8)")
          .context(what);
    }
    return make_error(Reason::kMalformedKey, "PEM \"" + block->label + "\" does not decode (the file is damaged)")
        .context(what);
  }
  out.encrypted = st.asked;
  out.format = block ? pem_format(*block) : der_format(out, d);
  return out;
}

namespace {

// The hash an RSA-PSS key's TPM copy is bound to: its file's restriction (the digest, MGF1 with the
// same digest, a minimum salt length the TPM's, the digest's length, satisfies), or SHA-256 for a
// key without restrictions (docs/keys.md, "RSA-PSS keys").
Result<TPM2_ALG_ID> pss_binding(EVP_PKEY* pkey) {
  // A restricted key names its mandatory digest; OpenSSL leaves out the restrictions that are
  // RFC 8017's defaults (SHA-1, MGF1 with SHA-1, a 20-byte salt), so those are assumed when absent.
  char md[64] = "", mgf1[64] = "";
  if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_MANDATORY_DIGEST, md, sizeof md, nullptr) != 1) {
    ERR_clear_error();
    return TPM2_ALG_SHA256;  // no restrictions
  }
  const TPM2_ALG_ID h = hash_from_name(md);
  if (h != TPM2_ALG_SHA256 && h != TPM2_ALG_SHA384 && h != TPM2_ALG_SHA512)
    return make_error(Reason::kUnsupported,
                      std::string("an RSA-PSS key restricted to ") + md + " (the TPM signs SHA-256, SHA-384 or SHA-512)");
  if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_RSA_MGF1_DIGEST, mgf1, sizeof mgf1, nullptr) != 1) {
    ERR_clear_error();
    std::snprintf(mgf1, sizeof mgf1, "SHA1");
  }
  if (hash_from_name(mgf1) != h)
    return make_error(Reason::kUnsupported, std::string("an RSA-PSS key restricted to ") + md + " with MGF1 over " + mgf1 +
                                                ": the TPM uses the signature digest for MGF1");
  int saltlen = 0;
  if (EVP_PKEY_get_int_param(pkey, OSSL_PKEY_PARAM_RSA_PSS_SALTLEN, &saltlen) != 1) {
    ERR_clear_error();
    saltlen = 20;
  }
  if (saltlen < 0 || size_t(saltlen) > hash_size(h))
    return make_error(Reason::kUnsupported, "an RSA-PSS key whose salt is at least " + std::to_string(saltlen) +
                                                " bytes: the TPM's salt is as long as the digest (" +
                                                std::to_string(hash_size(h)) + " bytes)");
  return h;
}

}  // namespace

Result<ImportForm> import_form(EVP_PKEY* pkey, bool with_auth) {
  ImportForm out;
  KeyOptions opts;
  opts.with_auth = with_auth;
  if (EVP_PKEY_is_a(pkey, "EC")) {
    char group[80] = "";
    size_t glen = 0;
    if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen) != 1) {
      ERR_clear_error();
      return make_error(Reason::kUnsupported,
                        std::string("an EC key with explicit curve parameters (no named curve): ") + kWhatImports);
    }
    const AlgorithmSpec* spec = find_ec_group(group);
    if (!spec)
      return make_error(Reason::kUnsupported, std::string("an EC key on curve ") + group + ": " + kWhatImports);
    SecretBnPtr d = bn_param(pkey, OSSL_PKEY_PARAM_PRIV_KEY);
    if (!d) return make_error(Reason::kMalformedKey, "the file holds only the public half of an EC key");
    SecretBnPtr x = bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X), y = bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y);
    if (!x || !y) return make_error(Reason::kMalformedKey, "the EC key has no public point");
    const size_t field = size_t(spec->bits + 7) / 8;
    opts.spec = spec;
    out.pub = import_template(opts);
    TPMS_ECC_POINT& q = out.pub.publicArea.unique.ecc;
    if (!put_padded(x.get(), field, &q.x) || !put_padded(y.get(), field, &q.y))
      return make_error(Reason::kMalformedKey, "the EC public point does not fit the curve");
    auto secret = secret_of(d.get(), field);
    if (!secret) return secret.take_error();
    out.spec = spec;
    out.secret = std::move(*secret);
    return out;
  }
  const bool pss = EVP_PKEY_is_a(pkey, "RSA-PSS");
  if (EVP_PKEY_is_a(pkey, "RSA") || pss) {
    SecretBnPtr n = bn_param(pkey, OSSL_PKEY_PARAM_RSA_N), e = bn_param(pkey, OSSL_PKEY_PARAM_RSA_E);
    if (!n || !e) return make_error(Reason::kMalformedKey, "the RSA key has no modulus or exponent");
    const int bits = BN_num_bits(n.get());
    if (pss) {
      auto hash = pss_binding(pkey);
      if (!hash) return hash.take_error();
      opts.pss_hash = *hash;
    }
    const AlgorithmSpec* spec = pss ? find_rsa_pss_bits(bits) : find_rsa_bits(bits);
    if (!spec || spec->weak) return make_error(Reason::kUnsupported, "a " + std::to_string(bits) + "-bit RSA key: " + kWhatImports);
    SecretBnPtr p = bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR1);
    if (!p) {
      if (bn_param(pkey, OSSL_PKEY_PARAM_RSA_D))
        return make_error(Reason::kUnsupported, "the RSA key file has no prime factors, which the TPM needs");
      return make_error(Reason::kMalformedKey, "the file holds only the public half of an RSA key");
    }
    if (bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR3))
      return make_error(Reason::kUnsupported, "a multi-prime RSA key (more than two primes): a TPM keeps one prime");
    if (BN_num_bits(e.get()) > 32 || !BN_is_odd(e.get()) || BN_get_word(e.get()) < 3)
      return make_error(Reason::kUnsupported, "the RSA public exponent is not an odd number below 2^32");
    const uint32_t exponent = uint32_t(BN_get_word(e.get()));
    opts.spec = spec;
    opts.rsa_exponent = exponent;
    out.pub = import_template(opts);
    if (!put_padded(n.get(), size_t(bits) / 8, &out.pub.publicArea.unique.rsa))
      return make_error(Reason::kMalformedKey, "the RSA modulus does not fit its size");
    // The TPM keeps one prime and computes the other from the modulus (Part 1, RSA sensitive area).
    auto secret = secret_of(p.get(), size_t(bits) / 16);
    if (!secret) return secret.take_error();
    out.spec = spec;
    out.secret = std::move(*secret);
    return out;
  }
  return make_error(Reason::kUnsupported, "this is " + key_type_phrase(pkey) + ": " + kWhatImports);
}

}  // namespace tpmkey
