#include "keystore/wrap.h"

#include <cctype>
#include <cstdio>
#include <cstring>
#include <utility>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "keystore/files.h"
#include "keystore/key.h"
#include "keystore/keystore.h"
#include "keystore/public_key.h"
#include "keystore/tpm/duplicate.h"
#include "keystore/tpm/kdf.h"
#include "keystore/uri.h"

namespace tpmkey {
namespace {

std::string import_what(const std::string& name) { return "import(tpm2:" + name + ")"; }

// The value of the "SRK-Name: HEX" line in the text before the first PEM block; nullopt if there
// is none. A malformed value is an error: the file was edited.
Result<std::optional<Bytes>> srk_name_line(const std::string& text) {
  const size_t pem = text.find("-----BEGIN ");
  const std::string head = text.substr(0, pem);
  size_t at = 0;
  while (at < head.size()) {
    size_t end = head.find('\n', at);
    if (end == std::string::npos) end = head.size();
    std::string line = head.substr(at, end - at);
    at = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind(kSrkNameField, 0) != 0) continue;
    const std::string hex = line.substr(std::strlen(kSrkNameField));
    Bytes out;
    if (hex.empty() || hex.size() % 2) return make_error(Reason::kMalformedKey, "the SRK-Name line is not hex");
    for (size_t i = 0; i < hex.size(); i += 2) {
      if (!std::isxdigit(uint8_t(hex[i])) || !std::isxdigit(uint8_t(hex[i + 1])))
        return make_error(Reason::kMalformedKey, "the SRK-Name line is not hex");
      out.push_back(uint8_t(std::stoi(hex.substr(i, 2), nullptr, 16)));
    }
    return std::optional<Bytes>(std::move(out));
  }
  return std::optional<Bytes>();
}

// Copies big-endian `b` into a TPM2B_ECC_PARAMETER padded to `size` bytes.
bool put_coordinate(const BIGNUM* b, size_t size, TPM2B_ECC_PARAMETER* out) {
  if (size > sizeof out->buffer || BN_bn2binpad(b, out->buffer, int(size)) != int(size)) return false;
  out->size = uint16_t(size);
  return true;
}

Status check_wrap_password(const std::optional<SecretBytes>& password) {
  if (!password) return Status::Ok();
  if (password->empty()) return make_error(Reason::kInvalidArgument, "the password is empty");
  if (password->size() > kMaxPasswordBytes)
    return make_error(Reason::kInvalidArgument, "the password is " + std::to_string(password->size()) +
                                                    " bytes long; a key's password can be at most " +
                                                    std::to_string(kMaxPasswordBytes) + " bytes");
  return Status::Ok();
}

std::string hex32(uint32_t h) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", h);
  return buf;
}


}  // namespace

// ---- the SRK file ----

Result<SrkFile> read_tpm_srk(Context& ctx) {
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error().context("srk");
  auto srk = (*tpm)->srk_public();
  if (!srk) return srk.take_error().context("srk");
  return SrkFile{srk->pub, std::move(srk->name)};
}

Result<std::string> srk_file_text(const Crypto& c, const SrkFile& srk) {
  auto pkey = public_pkey(srk.pub, c.libctx());
  if (!pkey) return pkey.take_error().context("srk");
  auto pem = spki_pem(pkey->get());
  if (!pem) return pem.take_error().context("srk");
  return std::string(
             "The storage root key (SRK) of a TPM: the owner primary of the standard ECC P-256\n"
             "storage template. Keys wrapped for it (tpmkey wrap --parent FILE) can be imported\n"
             "by this TPM alone (tpmkey import NAME WRAPPED-FILE). Its TPM name:\n") +
         kSrkNameField + to_hex(srk.name) + "\n" + *pem;
}

Result<SrkFile> read_srk_file(const Crypto& c, const std::string& path) {
  const std::string what = "read(" + path + ")";
  auto text = read_small_file(path, kMaxKeyFileSize, Symlinks::kFollow);
  if (!text) return text.take_error();
  auto name = srk_name_line(*text);
  if (!name) return name.take_error().context(what);
  if (!*name)
    return make_error(Reason::kMalformedKey,
                      std::string("no \"") + kSrkNameField + "HEX\" line: not an SRK file written by \"tpmkey srk\"")
        .context(what);
  BioPtr bio(BIO_new_mem_buf(text->data(), int(text->size())));
  EvpPkeyPtr pkey(bio ? PEM_read_bio_PUBKEY_ex(bio.get(), nullptr, nullptr, nullptr, c.libctx(), nullptr) : nullptr);
  ERR_clear_error();
  if (!pkey) return make_error(Reason::kMalformedKey, "no PUBLIC KEY block (SubjectPublicKeyInfo) in it").context(what);
  char group[64] = {};
  if (!EVP_PKEY_is_a(pkey.get(), "EC") ||
      EVP_PKEY_get_utf8_string_param(pkey.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, nullptr) != 1 ||
      (std::strcmp(group, "prime256v1") != 0 && std::strcmp(group, "P-256") != 0))
    return make_error(Reason::kUnsupported, "the public key is not an EC P-256 key, as the standard SRK is").context(what);
  BIGNUM *x = nullptr, *y = nullptr;
  SrkFile out;
  out.pub = srk_template().publicArea;
  const bool ok = EVP_PKEY_get_bn_param(pkey.get(), OSSL_PKEY_PARAM_EC_PUB_X, &x) == 1 &&
                  EVP_PKEY_get_bn_param(pkey.get(), OSSL_PKEY_PARAM_EC_PUB_Y, &y) == 1 &&
                  put_coordinate(x, 32, &out.pub.unique.ecc.x) && put_coordinate(y, 32, &out.pub.unique.ecc.y);
  BN_free(x);
  BN_free(y);
  ERR_clear_error();
  if (!ok) return make_error(Reason::kMalformedKey, "cannot read the public key's point").context(what);
  auto computed = object_name(c, out.pub);
  if (!computed) return computed.take_error().context(what);
  if (*computed != **name)
    return make_error(Reason::kMalformedKey,
                      "the SRK-Name line says " + to_hex(**name) + ", but the standard SRK template with this public "
                      "key has the name " + to_hex(*computed) +
                      ": the file was edited, or the key is not an SRK made with the standard template")
        .context(what);
  out.name = std::move(*computed);
  return out;
}

// ---- wrap ----

Result<WrappedKey> wrap_key(const Crypto& c, const WrapRequest& req) {
  const std::string what = "wrap(" + req.out_path + ")";
  if (Status st = check_wrap_password(req.password); !st) return st.take_error().context(what);
  auto srk = read_srk_file(c, req.parent_path);
  if (!srk) return srk.take_error().context(what);
  auto key = read_private_key(c, req.key_path, req.passphrase);
  if (!key) return key.take_error().context(what);
  const SecretBytes no_password;
  const SecretBytes& auth = req.password ? *req.password : no_password;
  auto form = import_form(key->pkey.get(), !auth.empty());
  if (!form) return form.take_error().context("read(" + req.key_path + ")").context(what);
  auto blob = make_duplicate(c, srk->pub, form->pub.publicArea, form->secret, auth);
  form->secret.wipe();
  if (!blob) return blob.take_error().context(what);

  ImportableKeyFile kf;
  kf.key.parent = kOwnerParent;
  kf.key.empty_auth = auth.empty();
  kf.key.pub = form->pub;
  kf.key.priv = blob->duplicate;
  kf.key.description = req.description;
  kf.sym_seed = blob->sym_seed;
  const std::string pem = importable_keyfile_pem(kf);
  if (pem.empty()) return keyfile_unwritable().context(what);
  const std::string text =
      "A key wrapped for one TPM only: the TPM whose storage root key has the name\n"
      "below. Bring it in there with: tpmkey import NAME FILE\n" +
      std::string(kSrkNameField) + to_hex(srk->name) + "\n" + pem;
  if (Status st = write_file_exclusive(req.out_path, text); !st) return st.take_error().context(what);
  WrappedKey out;
  out.spec = form->spec;
  out.format = key->format;
  out.encrypted = key->encrypted;
  out.password = !auth.empty();
  out.srk_name = srk->name;
  return out;
}

// ---- import of a wrapped key ----

bool is_wrapped_key_file(const std::string& path) {
  auto data = read_small_file(path, kMaxKeyFileSize, Symlinks::kFollow);
  return data && is_importable_keyfile(reinterpret_cast<const uint8_t*>(data->data()), data->size());
}

Result<WrappedImport> open_wrapped(Context& ctx, const std::string& name, const std::string& path) {
  TPMKEY_TRY(check_import(ctx, name));
  const std::string what = import_what(name), read = "read(" + path + ")";
  auto data = read_small_file(path, kMaxKeyFileSize, Symlinks::kFollow);
  if (!data) return data.take_error().context(what);
  auto kf = parse_importable_keyfile(reinterpret_cast<const uint8_t*>(data->data()), data->size());
  if (!kf) return kf.take_error().context(read).context(what);
  auto hint = srk_name_line(*data);
  if (!hint) return hint.take_error().context(read).context(what);
  if (kf->key.parent != kOwnerParent)
    return make_error(Reason::kUnsupported, "the key was wrapped for parent " + hex32(kf->key.parent) +
                                                "; tpmkey imports wrapped keys under the owner SRK (0x40000001) only")
        .context(what);
  auto spec = spec_of(kf->key.pub.publicArea);
  if (!spec) return spec.take_error().context(read).context(what);
  WrappedImport out;
  out.spec = *spec;
  out.name = name;
  out.path = path;
  out.file = std::move(*kf);
  out.wrapped_for = std::move(*hint);
  return out;
}

Result<ImportedKey> import_wrapped_key(Context& ctx, WrappedImport import, ImportOptions opts) {
  const std::string what = import_what(import.name);
  TPMKEY_TRY(check_import(ctx, import.name));
  const Bytes* wrapped_for = import.wrapped_for ? &*import.wrapped_for : nullptr;
  // The keystore's pin names this TPM's SRK: a file for another one is refused sending nothing.
  auto pin = ctx.keystore().read_pin();
  if (!pin) return pin.take_error().context(what);
  if (wrapped_for && *pin && (*pin)->name != *wrapped_for)
    return make_error(Reason::kInvalidArgument, "this file was wrapped for another TPM: its SRK name is " +
                                                    to_hex(*wrapped_for) + ", this TPM's is " + to_hex((*pin)->name) +
                                                    " (the keystore's pin; nothing was sent to the TPM)")
        .context(what);
  auto crypto = ctx.crypto();
  if (!crypto) return crypto.take_error().context(what);
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error().context(what);
  Duplicate blob;
  blob.duplicate = import.file.key.priv;
  blob.sym_seed = import.file.sym_seed;
  auto priv = (*tpm)->import_duplicate(import.file.key.pub, blob, wrapped_for);
  OPENSSL_cleanse(&blob.duplicate, sizeof blob.duplicate);
  if (!priv) {
    Error e = priv.take_error();
    if (tpm_base_code(e.rc) == TPM2_RC_INTEGRITY) {
      if (wrapped_for) {
        e.detail = "the wrapped key is damaged or was altered (the TPM's integrity check of the duplicate failed, "
                   "TPM_RC_INTEGRITY): " + e.detail;
      } else {
        std::string mine;
        if (auto srk = (*tpm)->srk_public()) mine = ", this TPM's SRK name is " + to_hex(srk->name);
        e.detail = "the TPM's integrity check of the duplicate failed (TPM_RC_INTEGRITY): the file was wrapped for "
                   "another TPM, or is damaged" + mine + ": " + e.detail;
      }
    }
    return e.context(what);
  }
  KeyFile stored = import.file.key;
  stored.priv = *priv;
  if (opts.description) stored.description = *opts.description;
  {
    // TPM2_Load and a signature, verified with the file's public key: the TPM holds this very key.
    auto key = Key::from_file(ctx, stored, "tpm2:" + import.name);
    if (!key) return key.take_error().context(what);
    if ((*key)->needs_auth() && opts.password) (*key)->set_auth(std::move(*opts.password));
    if (Status st = self_test(**key, **crypto); !st) return st.take_error().context(what);
  }  // the key's handle is flushed here, before anything is written
  if (Status st = ctx.keystore().add(import.name, stored); !st) return st.take_error().context(what);
  ImportedKey out;
  out.path = ctx.keystore().path_of(import.name);
  out.spec = import.spec;
  out.parent = kOwnerParent;
  out.password = !stored.empty_auth;
  return out;
}

}  // namespace tpmkey
