#include "keystore/keyfile.h"

#include <cstring>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <tss2/tss2_mu.h>

#include "keystore/der.h"
#include "keystore/tpm/tss_loader.h"
#include "keystore/tpm_wire.h"

namespace tpmkey {
namespace {

// 2.23.133.10.1.{3,4,5}: loadableKey, importableKey, sealedData.
constexpr uint8_t kOidLoadable[] = {0x67, 0x81, 0x05, 0x0A, 0x01, 0x03};
constexpr uint8_t kOidImportable[] = {0x67, 0x81, 0x05, 0x0A, 0x01, 0x04};
constexpr uint8_t kOidSealed[] = {0x67, 0x81, 0x05, 0x0A, 0x01, 0x05};
constexpr size_t kOidArcLength = 5;  // 2.23.133.10.1, the arc all three share

Error bad(std::string detail) { return make_error(Reason::kMalformedKey, std::move(detail)); }

bool oid_is(const der::Tlv& t, const uint8_t* oid, size_t n) {
  return t.length == n && std::memcmp(t.value, oid, n) == 0;
}

// `seed`: parse an importable key (and only that) into it; nullptr: a loadable key.
Result<KeyFile> parse_der(const uint8_t* data, size_t size, TPM2B_ENCRYPTED_SECRET* seed = nullptr) {
  der::Reader outer(data, size);
  auto seq = outer.next_if(der::kSequence);
  if (!seq) return bad(looks_like_tss2_der(data, size) ? "truncated TSS2 PRIVATE KEY" : "not a TSS2 PRIVATE KEY structure");
  if (!outer.at_end()) return bad("data after the TSS2 PRIVATE KEY structure");
  der::Reader r(seq->value, seq->length);

  auto oid = r.next_if(der::kOid);
  if (!oid) return bad("missing key type OID");
  const bool importable = oid_is(*oid, kOidImportable, sizeof kOidImportable);
  if (importable && !seed)
    return make_error(Reason::kUnsupported,
                      "an importable key (wrapped for a TPM, not yet imported): bring it in with \"tpmkey import NAME "
                      "FILE\" on the TPM it was wrapped for");
  if (oid_is(*oid, kOidSealed, sizeof kOidSealed))
    return make_error(Reason::kUnsupported, "the file holds sealed data, not a key");
  if (!importable && seed) return bad("not an importable key file (its type is not importableKey)");
  if (!importable && !oid_is(*oid, kOidLoadable, sizeof kOidLoadable)) return bad("unknown key type OID");

  KeyFile kf;
  kf.empty_auth = false;  // absent emptyAuth means the key has a password
  if (auto t = r.next_if(der::context_tag(0))) {
    der::Reader b(t->value, t->length);
    auto v = b.next_if(der::kBoolean);
    if (!v || v->length != 1 || !b.at_end()) return bad("bad emptyAuth field");
    kf.empty_auth = v->value[0] != 0;
  }
  if (r.next_if(der::context_tag(1)))
    return make_error(Reason::kUnsupported, "keys with authorization policies are not supported yet");
  if (auto t = r.next_if(der::context_tag(2))) {
    if (!seed) return bad("a loadable key with a secret field");
    der::Reader b(t->value, t->length);
    auto v = b.next_if(der::kOctetString);
    if (!v || !b.at_end()) return bad("bad secret field");
    // The draft keeps the TPM2B_ENCRYPTED_SECRET's contents; a marshalled one (its 16-bit size
    // first) is taken too. For an ECC parent the contents begin with the point's x size, never
    // with the total length less two, so the two cannot be confused.
    const uint8_t* p = v->value;
    size_t n = v->length;
    if (n >= 2 && size_t(p[0] << 8 | p[1]) == n - 2) p += 2, n -= 2;
    if (n == 0 || n > sizeof seed->secret) return bad("bad secret field (the encrypted seed)");
    seed->size = uint16_t(n);
    std::memcpy(seed->secret, p, n);
  } else if (seed) {
    return bad("an importable key without its secret field (the encrypted seed)");
  }
  if (r.next_if(der::context_tag(3)))
    return make_error(Reason::kUnsupported, "keys with authorization policies are not supported yet");
  if (auto t = r.next_if(der::context_tag(4))) {
    der::Reader b(t->value, t->length);
    auto v = b.next_if(der::kUtf8String);
    if (!v || !b.at_end()) return bad("bad description field");
    kf.description.assign(reinterpret_cast<const char*>(v->value), v->length);
  }
  if (auto t = r.next_if(der::context_tag(5))) {
    der::Reader b(t->value, t->length);
    auto v = b.next_if(der::kBoolean);
    if (!v || v->length != 1 || !b.at_end()) return bad("bad rsaParent field");
    if (v->value[0]) return make_error(Reason::kUnsupported, "keys under an RSA parent are not supported");
  }
  auto parent = r.next_if(der::kInteger);
  auto parent_value = parent ? der::to_u32(*parent) : std::nullopt;
  if (!parent_value) return bad("missing or invalid parent handle");
  kf.parent = *parent_value;

  auto pub = r.next_if(der::kOctetString);
  auto priv = r.next_if(der::kOctetString);
  if (!pub || !priv || !r.at_end() || r.failed()) return bad("missing public or private blob");
  // Read here, not by tss2-mu: a process that signs through an agent loads no tpm2-tss library.
  if (!read_tpm2b_public(pub->value, pub->length, &kf.pub)) return bad("the public blob is not a TPM2B_PUBLIC");
  if (!read_tpm2b_private(priv->value, priv->length, &kf.priv))
    return bad("the private blob is not a TPM2B_PRIVATE");
  return kf;
}

}  // namespace

bool looks_like_tss2_der(const uint8_t* data, size_t size) {
  if (size < 2 || data[0] != der::kSequence) return false;
  size_t i = 2;
  if (data[1] & 0x80) i += data[1] & 0x7F;  // long-form length: skip its bytes
  return size >= i + 2 + kOidArcLength && data[i] == der::kOid && data[i + 1] == sizeof kOidLoadable &&
         std::memcmp(data + i + 2, kOidLoadable, kOidArcLength) == 0;
}

Result<KeyFile> parse_keyfile(const uint8_t* data, size_t size) {
  // DER is a SEQUENCE from its first byte; anything else is read as PEM (text, possibly after
  // explanatory lines). A DER file whose description happens to contain "-----BEGIN " stays DER.
  if (size > 0 && data[0] == der::kSequence) return parse_der(data, size);
  static constexpr char kPemStart[] = "-----BEGIN ";
  bool pem = false;
  for (size_t i = 0; i + sizeof kPemStart - 1 <= size; ++i) {
    if (std::memcmp(data + i, kPemStart, sizeof kPemStart - 1) == 0) {
      pem = true;
      break;
    }
  }
  if (!pem) return parse_der(data, size);

  BioPtr bio(BIO_new_mem_buf(data, int(size)));
  char *name = nullptr, *header = nullptr;
  unsigned char* body = nullptr;
  long len = 0;
  if (!bio || PEM_read_bio(bio.get(), &name, &header, &body, &len) != 1) {
    ERR_clear_error();
    return bad("unreadable PEM");
  }
  bool label_ok = std::strcmp(name, kTss2PemLabel) == 0;
  auto result = label_ok ? parse_der(body, size_t(len))
                         : Result<KeyFile>(bad(std::string("PEM label is \"") + name + "\", not \"" +
                                               kTss2PemLabel + "\""));
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(body);
  return result;
}

namespace {

Bytes write_der(const KeyFile& kf, const TPM2B_ENCRYPTED_SECRET* seed) {
  uint8_t pub[sizeof(TPM2B_PUBLIC)], priv[sizeof(TPM2B_PRIVATE)];
  size_t pub_len = 0, priv_len = 0;
  // tss2-mu writes the blobs (loaded on this first use, tss_loader.h); nothing if it cannot.
  if (Tss2_MU_TPM2B_PUBLIC_Marshal(&kf.pub, pub, sizeof pub, &pub_len) != TSS2_RC_SUCCESS ||
      Tss2_MU_TPM2B_PRIVATE_Marshal(&kf.priv, priv, sizeof priv, &priv_len) != TSS2_RC_SUCCESS)
    return {};

  der::Writer body;
  if (seed) body.tlv(der::kOid, kOidImportable, sizeof kOidImportable);
  else body.tlv(der::kOid, kOidLoadable, sizeof kOidLoadable);
  if (kf.empty_auth) {
    der::Writer b;
    b.boolean(true);
    body.tlv(der::context_tag(0), b.bytes());
  }
  if (seed) {
    der::Writer b;
    b.tlv(der::kOctetString, seed->secret, seed->size);
    body.tlv(der::context_tag(2), b.bytes());
  }
  if (!kf.description.empty()) {
    der::Writer d;
    d.tlv(der::kUtf8String, reinterpret_cast<const uint8_t*>(kf.description.data()), kf.description.size());
    body.tlv(der::context_tag(4), d.bytes());
  }
  body.u32(kf.parent);
  body.tlv(der::kOctetString, pub, pub_len);
  body.tlv(der::kOctetString, priv, priv_len);
  der::Writer out;
  out.tlv(der::kSequence, body.bytes());
  return out.bytes();
}

std::string pem_of(const Bytes& d) {
  if (d.empty()) return "";
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio(bio.get(), kTss2PemLabel, "", d.data(), long(d.size()));
  char* p = nullptr;
  long n = BIO_get_mem_data(bio.get(), &p);
  return std::string(p, size_t(n));
}

// The DER of a PEM or DER key file (empty if unreadable).
Bytes der_of(const uint8_t* data, size_t size) {
  if (size > 0 && data[0] == der::kSequence) return Bytes(data, data + size);
  BioPtr bio(BIO_new_mem_buf(data, int(size)));
  char *name = nullptr, *header = nullptr;
  unsigned char* body = nullptr;
  long len = 0;
  Bytes out;
  if (bio && PEM_read_bio(bio.get(), &name, &header, &body, &len) == 1 && std::strcmp(name, kTss2PemLabel) == 0)
    out.assign(body, body + len);
  ERR_clear_error();
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(body);
  return out;
}

}  // namespace

Bytes keyfile_der(const KeyFile& kf) { return write_der(kf, nullptr); }
Error keyfile_unwritable() {
  const std::string why = tss::load_failure();
  return make_error(Reason::kTpmUnreachable, "cannot encode the key file: " + (why.empty() ? "tss2-mu failed" : why));
}
std::string keyfile_pem(const KeyFile& kf) { return pem_of(write_der(kf, nullptr)); }
Bytes importable_keyfile_der(const ImportableKeyFile& kf) { return write_der(kf.key, &kf.sym_seed); }
std::string importable_keyfile_pem(const ImportableKeyFile& kf) { return pem_of(write_der(kf.key, &kf.sym_seed)); }

bool is_importable_keyfile(const uint8_t* data, size_t size) {
  const Bytes d = der_of(data, size);
  der::Reader outer(d.data(), d.size());
  auto seq = outer.next_if(der::kSequence);
  if (!seq) return false;
  der::Reader r(seq->value, seq->length);
  auto oid = r.next_if(der::kOid);
  return oid && oid_is(*oid, kOidImportable, sizeof kOidImportable);
}

Result<ImportableKeyFile> parse_importable_keyfile(const uint8_t* data, size_t size) {
  const Bytes d = der_of(data, size);
  if (d.empty()) return bad("not a TSS2 PRIVATE KEY file (PEM or DER)");
  ImportableKeyFile out;
  auto kf = parse_der(d.data(), d.size(), &out.sym_seed);
  if (!kf) return kf.take_error();
  out.key = std::move(*kf);
  return out;
}

}  // namespace tpmkey
