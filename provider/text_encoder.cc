// Text encoder: `openssl pkey -text` for a TPM key (a software key is the default provider's to
// print). Prints the size, the public components as OpenSSL prints them, and what the TPM adds:
// the algorithm, the parent, whether a password is needed and where the key was made (in the
// TPM, or imported). There is no private material to
// print: it never leaves the TPM.
#include <openssl/core_names.h>
#include <openssl/err.h>

#include <cstdio>

#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

void* newctx(void* provctx) noexcept { return provctx; }
void freectx(void*) noexcept {}

int does_selection(void*, int selection) noexcept {
  return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string parent_text(uint32_t parent) {
  if (parent == kOwnerParent) return hex32(parent) + " (owner hierarchy, standard ECC P-256 storage primary)";
  if ((parent >> 24) == TPM2_HT_PERSISTENT) return hex32(parent) + " (persistent key)";
  return hex32(parent);
}

// The default provider's text for the public half, without its "Public-Key: (N bit)" heading.
Result<std::string> public_body(EVP_PKEY* pub) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || EVP_PKEY_print_public(bio.get(), pub, 0, nullptr) != 1) {
    ERR_clear_error();
    return make_error(Reason::kInternal, "cannot print the public key");
  }
  char* p = nullptr;
  long n = BIO_get_mem_data(bio.get(), &p);
  std::string text(p, size_t(n));
  size_t eol = text.find('\n');
  return eol == std::string::npos ? std::string() : text.substr(eol + 1);
}

// Where the private key was made, as its public area says. The TPM generates every key made with
// TPM2_Create with sensitiveDataOrigin set (it refuses an asymmetric key without it), and
// TPM2_Import takes only keys that are neither fixedTPM nor fixedParent.
std::string origin_text(const TPMT_PUBLIC& pub) {
  if (is_imported(pub)) return "imported (was outside the TPM once)";
  if (pub.objectAttributes & TPMA_OBJECT_FIXEDTPM) return "generated in the TPM";
  return "generated in a TPM, duplicable (not fixedTPM: it may have left that TPM)";
}

// The description comes from the file: control characters are shown as \xNN, never sent to a
// terminal as they are.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

std::string describe(const Key& key, const std::string& body, bool private_part) {
  const AlgorithmSpec& spec = key.spec();
  std::string out = private_part ? "Private-Key: (" : "Public-Key: (";
  out += std::to_string(spec.bits) + " bit";
  if (private_part) out += ", in the TPM";
  out += ")\n" + body;
  out += "TPM algorithm: " + std::string(spec.name) + "\n";
  out += "TPM parent: " + parent_text(key.file().parent) + "\n";
  out += std::string("TPM password: ") + (key.needs_auth() ? "needed" : "not needed") + "\n";
  out += "TPM origin: " + origin_text(key.file().pub.publicArea) + "\n";
  if (!key.file().description.empty()) out += "Description: " + printable(key.file().description) + "\n";
  out += "TPM usage: " + usage_text(key.usage()) + "\n";
  return out;
}

int encode(void* vctx, OSSL_CORE_BIO* out, const void* obj, const OSSL_PARAM[], int selection,
           OSSL_PASSPHRASE_CALLBACK*, void*) noexcept {
  auto* prov = provider_ctx(vctx);
  return guard(prov, "encode_text", [&]() -> Status {
    const auto* kd = static_cast<const KeyData*>(obj);
    if (!kd || !kd->pkey()) return make_error(Reason::kInvalidArgument, "nothing to encode");
    if (!kd->key) return encode_software(prov, out, *kd, selection, "TEXT", nullptr, "", nullptr, nullptr);
    auto body = public_body(kd->key->public_pkey());
    if (!body) return body.take_error().context("text(" + kd->key->label() + ")");
    bool private_part = selection == 0 || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY);
    std::string text = describe(*kd->key, *body, private_part);
    size_t written = 0;
    if (!prov->bio_write || !prov->bio_write(out, text.data(), text.size(), &written) || written != text.size())
      return make_error(Reason::kIo, "cannot write the text").context("text(" + kd->key->label() + ")");
    return Status::Ok();
  });
}

}  // namespace

const OSSL_DISPATCH kTextEncoder[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_NEWCTX, encoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_FREECTX, encoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_DOES_SELECTION, encoder_does_selection, does_selection),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_ENCODE, encoder_encode, encode),
    {0, nullptr}};

}  // namespace tpmkey::provider
