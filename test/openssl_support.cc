#include "test/openssl_support.h"

#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>
#include <stdexcept>

#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <openssl/ui.h>
#include <openssl/x509.h>

#include "keystore/ossl.h"
#include "provider/params.h"
#include "provider/tpm_commands.h"
#include "test/process.h"

namespace tpmkey::test {

std::string write_openssl_cnf(const std::string& dir, bool tpmkey_first, const std::string& tcti,
                              const std::string& keystore, const std::string& extra) {
  std::string path = dir + (tpmkey_first ? "/tpmkey-first.cnf" : "/default-first.cnf");
  std::ostringstream c;
  c << "openssl_conf = openssl_init\n\n[openssl_init]\nproviders = provider_sect\n\n[provider_sect]\n";
  if (tpmkey_first) c << "tpmkey = tpmkey_sect\ndefault = default_sect\n";
  else c << "default = default_sect\ntpmkey = tpmkey_sect\n";
  c << "\n[default_sect]\nactivate = 1\n\n[tpmkey_sect]\nmodule = " << provider_dir() << "/tpmkey.so\n"
    << "tcti = " << tcti << "\nkeystore = " << keystore << "\n" << extra << "activate = 1\n";
  write_file(path, c.str());
  return path;
}

OSSL_LIB_CTX* new_configured_libctx(const std::string& cnf) {
  OSSL_LIB_CTX* ctx = OSSL_LIB_CTX_new();
  if (!ctx || !OSSL_LIB_CTX_load_config(ctx, cnf.c_str()))
    throw std::runtime_error("cannot load " + cnf + ": " + drain_errors());
  return ctx;
}

uint64_t tpm_commands(OSSL_LIB_CTX* libctx) {
  uint64_t n = 0;
  if (!read_tpm_commands(libctx, &n)) throw std::runtime_error("cannot read the TPM command counter");
  return n;
}

std::string drain_errors() { return drain_openssl_errors("\n"); }

// Verification happens here: a library context holding the default provider and nothing else.
OSSL_LIB_CTX* default_only() {
  static OSSL_LIB_CTX* ctx = [] {
    OSSL_LIB_CTX* c = OSSL_LIB_CTX_new();
    OSSL_PROVIDER_load(c, "default");
    return c;
  }();
  return ctx;
}

// The key's public half, re-read from SubjectPublicKeyInfo into the default-only context.
PkeyPtr public_copy(EVP_PKEY* pkey) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(pkey, &der);
  const unsigned char* p = der;
  EVP_PKEY* pub = n > 0 ? d2i_PUBKEY_ex(nullptr, &p, n, default_only(), nullptr) : nullptr;
  OPENSSL_free(der);
  return PkeyPtr(pub, EVP_PKEY_free);
}

std::vector<unsigned char> digest_sign(OSSL_LIB_CTX* lib, EVP_PKEY* key, const std::string& msg, SignOpts o) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  std::vector<unsigned char> sig;
  size_t len = 0;
  if (EVP_DigestSignInit_ex(md, &pctx, o.md, lib, nullptr, key, nullptr) == 1 &&
      (!o.padding || EVP_PKEY_CTX_set_rsa_padding(pctx, o.padding) == 1) &&
      (o.padding != RSA_PKCS1_PSS_PADDING || EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1) &&
      EVP_DigestSign(md, nullptr, &len, reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) == 1) {
    sig.resize(len);
    if (EVP_DigestSign(md, sig.data(), &len, reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) == 1)
      sig.resize(len);
    else
      sig.clear();
  }
  EVP_MD_CTX_free(md);
  return sig;
}

bool digest_verify(EVP_PKEY* pub, const std::string& msg, const std::vector<unsigned char>& sig, SignOpts o) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  bool ok = EVP_DigestVerifyInit_ex(md, &pctx, o.md, default_only(), nullptr, pub, nullptr) == 1 &&
            (!o.padding || EVP_PKEY_CTX_set_rsa_padding(pctx, o.padding) == 1) &&
            (o.padding != RSA_PKCS1_PSS_PADDING || EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1) &&
            EVP_DigestVerify(md, sig.data(), sig.size(), reinterpret_cast<const unsigned char*>(msg.data()),
                             msg.size()) == 1;
  EVP_MD_CTX_free(md);
  return ok;
}

PkeyPtr generate_key(OSSL_LIB_CTX* lib, const char* type, const char* group, size_t bits, const char* user_auth) {
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(lib, type, "provider=tpmkey");
  EVP_PKEY* key = nullptr;
  OSSL_PARAM params[3];
  int n = 0;
  if (group) params[n++] = OSSL_PARAM_construct_utf8_string("group", const_cast<char*>(group), 0);
  else params[n++] = OSSL_PARAM_construct_size_t("bits", &bits);
  if (user_auth) params[n++] = OSSL_PARAM_construct_utf8_string(kParamUserAuth, const_cast<char*>(user_auth), 0);
  params[n] = OSSL_PARAM_construct_end();
  if (!ctx || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_CTX_set_params(ctx, params) != 1 ||
      EVP_PKEY_generate(ctx, &key) != 1)
    key = nullptr;
  EVP_PKEY_CTX_free(ctx);
  return PkeyPtr(key, EVP_PKEY_free);
}

bool store_key(EVP_PKEY* key, const std::string& path) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  BIO* b = BIO_new_file(path.c_str(), "w");
  bool ok = b && PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  BIO_free(b);
  return ok;
}

PkeyPtr load_key(OSSL_LIB_CTX* lib, const std::string& uri, int expect, const char* passphrase) {
  // The prompt's answer, as a PEM password callback would give it (its user data: `passphrase`).
  pem_password_cb* answer = [](char* buf, int size, int, void* u) -> int {
    const int n = int(std::strlen(static_cast<const char*>(u)));
    if (n > size) return -1;
    std::memcpy(buf, u, size_t(n));
    return n;
  };
  std::unique_ptr<UI_METHOD, void (*)(UI_METHOD*)> ui(passphrase ? UI_UTIL_wrap_read_pem_callback(answer, 0) : nullptr,
                                                     UI_destroy_method);
  OSSL_STORE_CTX* s = OSSL_STORE_open_ex(uri.c_str(), lib, nullptr, ui.get(), const_cast<char*>(passphrase), nullptr,
                                         nullptr, nullptr);
  EVP_PKEY* key = nullptr;
  if (s) {
    if (expect) OSSL_STORE_expect(s, expect);
    while (!key && !OSSL_STORE_eof(s)) {
      OSSL_STORE_INFO* info = OSSL_STORE_load(s);
      if (!info) break;
      if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) key = OSSL_STORE_INFO_get1_PKEY(info);
      if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PUBKEY) key = OSSL_STORE_INFO_get1_PUBKEY(info);
      OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(s);
  }
  return PkeyPtr(key, EVP_PKEY_free);
}

std::vector<unsigned char> sha(const char* md, const std::string& msg) {
  std::vector<unsigned char> d(EVP_MAX_MD_SIZE);
  size_t n = 0;  // EVP_Q_digest writes a size_t
  if (EVP_Q_digest(default_only(), md, nullptr, msg.data(), msg.size(), d.data(), &n) != 1)
    throw std::runtime_error(std::string("cannot compute the ") + md + " digest: " + drain_errors());
  d.resize(n);
  return d;
}

PkeyPtr read_pem_private_key(const std::string& path) {
  BIO* bio = BIO_new_file(path.c_str(), "r");
  EVP_PKEY* k = bio ? PEM_read_bio_PrivateKey_ex(bio, nullptr, nullptr, nullptr, default_only(), nullptr) : nullptr;
  BIO_free(bio);
  return PkeyPtr(k, EVP_PKEY_free);
}

}  // namespace tpmkey::test
