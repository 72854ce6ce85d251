// One unique_ptr spelling for every OpenSSL object, and a wiped byte buffer for secrets.
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

namespace tpmkey {

template <typename T, void (*Free)(T*)>
struct OsslDeleter {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using OsslPtr = std::unique_ptr<T, OsslDeleter<T, Free>>;

using EvpPkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;
using EvpPkeyCtxPtr = OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using EvpMdPtr = OsslPtr<EVP_MD, EVP_MD_free>;
using EvpMdCtxPtr = OsslPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using EvpCipherPtr = OsslPtr<EVP_CIPHER, EVP_CIPHER_free>;
using EvpCipherCtxPtr = OsslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;
using BioPtr = OsslPtr<BIO, BIO_free_all>;
using BignumPtr = OsslPtr<BIGNUM, BN_free>;
using EcdsaSigPtr = OsslPtr<ECDSA_SIG, ECDSA_SIG_free>;
using ParamBldPtr = OsslPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using ParamPtr = OsslPtr<OSSL_PARAM, OSSL_PARAM_free>;
using LibCtxPtr = OsslPtr<OSSL_LIB_CTX, OSSL_LIB_CTX_free>;

using Bytes = std::vector<uint8_t>;

// Memory for secrets: OpenSSL's secure heap (locked in RAM, so never swapped out, and wiped when
// freed) in a process that set one up with CRYPTO_secure_malloc_init, as tpmkey agent does;
// elsewhere the ordinary heap, still wiped when freed.
template <typename T>
struct SecureAllocator {
  using value_type = T;
  SecureAllocator() = default;
  template <typename U>
  SecureAllocator(const SecureAllocator<U>&) {}
  T* allocate(size_t n) {
    void* p = OPENSSL_secure_malloc(n * sizeof(T));
    // A full secure heap: the ordinary one (OPENSSL_secure_clear_free frees either kind).
    if (!p) p = OPENSSL_malloc(n * sizeof(T));
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) { OPENSSL_secure_clear_free(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const SecureAllocator<U>&) const { return true; }
};

// A byte buffer for secrets (passwords, PINs, keys): in SecureAllocator's memory, and wiped
// (OPENSSL_cleanse) when it is destroyed or cleared.
class SecretBytes {
 public:
  SecretBytes() = default;
  SecretBytes(const uint8_t* p, size_t n) : v_(p, p + n) {}
  explicit SecretBytes(size_t n) : v_(n, 0) {}  // n zero bytes
  SecretBytes(const SecretBytes&) = default;
  SecretBytes& operator=(const SecretBytes& o) {
    if (this != &o) { wipe(); v_ = o.v_; }
    return *this;
  }
  SecretBytes(SecretBytes&& o) noexcept : v_(std::move(o.v_)) {}
  SecretBytes& operator=(SecretBytes&& o) noexcept {
    if (this != &o) { wipe(); v_ = std::move(o.v_); }
    return *this;
  }
  ~SecretBytes() { wipe(); }
  void wipe() {
    if (!v_.empty()) OPENSSL_cleanse(v_.data(), v_.size());
    v_.clear();
  }
  void append(const uint8_t* p, size_t n) {
    // Grow by copying into a fresh buffer so no stale copy is left behind unwiped.
    Buffer next;
    next.reserve(v_.size() + n);
    next.insert(next.end(), v_.begin(), v_.end());
    next.insert(next.end(), p, p + n);
    wipe();
    v_ = std::move(next);
  }
  const uint8_t* data() const { return v_.data(); }
  uint8_t* data() { return v_.data(); }
  size_t size() const { return v_.size(); }
  bool empty() const { return v_.empty(); }

 private:
  using Buffer = std::vector<uint8_t, SecureAllocator<uint8_t>>;
  Buffer v_;
};

// Empties this thread's OpenSSL error queue into text, one entry per error with its data, joined
// by `separator` (what the tests and benchmarks show when an OpenSSL call fails).
inline std::string drain_openssl_errors(const char* separator) {
  std::string out;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += separator;
    out += buf;
    if (data && (flags & ERR_TXT_STRING) && *data) out += std::string(" ") + data;
  }
  return out;
}

}  // namespace tpmkey
