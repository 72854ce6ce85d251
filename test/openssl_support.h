// Test support: OpenSSL with tpmkey. openssl.cnf files and library contexts, the TPM command
// counter, keys generated, stored and loaded through the provider, signatures verified by the
// default provider alone, digests, and the error queue as text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/types.h>

namespace tpmkey::test {

// An openssl.cnf that activates tpmkey and default in the given order with these settings.
// `extra` lines go into tpmkey's section (for example "authorization = password").
std::string write_openssl_cnf(const std::string& dir, bool tpmkey_first, const std::string& tcti,
                              const std::string& keystore, const std::string& extra = "");

// A library context configured by write_openssl_cnf (tpmkey and default activated).
OSSL_LIB_CTX* new_configured_libctx(const std::string& cnf);
// TPM commands the libctx's tpmkey provider has sent.
uint64_t tpm_commands(OSSL_LIB_CTX* libctx);
using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

// Verification happens here: a library context holding the default provider and nothing else.
OSSL_LIB_CTX* default_only();
// The key's public half, re-read from SubjectPublicKeyInfo into the default-only context.
PkeyPtr public_copy(EVP_PKEY* pkey);
// The private key in a PEM file, read by the default provider alone (null if it does not read).
PkeyPtr read_pem_private_key(const std::string& path);

struct SignOpts {
  const char* md = "SHA256";
  int padding = 0;  // RSA: RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING
};
// EVP_DigestSign in `lib` (empty on failure); EVP_DigestVerify in default_only().
std::vector<unsigned char> digest_sign(OSSL_LIB_CTX* lib, EVP_PKEY* key, const std::string& msg, SignOpts o);
bool digest_verify(EVP_PKEY* pub, const std::string& msg, const std::vector<unsigned char>& sig, SignOpts o);

// The digest of `msg` (md: "SHA256", ...) computed by the default provider.
std::vector<unsigned char> sha(const char* md, const std::string& msg);

// Generates a key in the TPM through EVP_PKEY_generate (group for EC, bits for RSA).
PkeyPtr generate_key(OSSL_LIB_CTX* lib, const char* type, const char* group, size_t bits,
                     const char* user_auth = nullptr);
// Writes the key's TSS2 PEM (through the tpmkey encoder) to `path`.
bool store_key(EVP_PKEY* key, const std::string& path);
// The first private (or, with `expect`, public) key OSSL_STORE finds at `uri`; `passphrase`
// answers OpenSSL's passphrase prompt, if it comes.
PkeyPtr load_key(OSSL_LIB_CTX* lib, const std::string& uri, int expect = 0, const char* passphrase = nullptr);

// All OpenSSL errors on the queue as text (and clears it).
std::string drain_errors();

}  // namespace tpmkey::test
