// RSA decryption padding done in software over the TPM's raw RSA operation (docs/keys.md,
// "Decryption"): PKCS#1 v1.5 unpadding with implicit rejection, in constant time, and OAEP
// decoding for labels the TPM cannot take.
#pragma once

#include <cstddef>
#include <cstdint>

#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

// The fixed public value whose raw RSA decryption is a key's implicit-rejection secret: k bytes
// (the modulus size), a zero byte (so it is below any k-byte modulus) and then SHA-256 of
// "tpmkey implicit rejection" || a 4-byte counter, repeated.
Bytes implicit_rejection_probe(const Crypto& c, size_t k);

// RSAES-PKCS1-v1_5 decoding of `em` (the raw decryption, k bytes) with implicit rejection
// (draft-irtf-cfrg-rsa-guidance; OpenSSL 3.2's construction with another key-derivation key):
//   KDK       = HMAC-SHA256(SHA-256(secret), ciphertext left-padded to k bytes)
//   PRF(L, n) = the first n bits of HMAC-SHA256(KDK, be16(0) || L || be16(n)) ||
//               HMAC-SHA256(KDK, be16(1) || L || be16(n)) || ...
//   lengths   = PRF("length", 2048) as 128 big-endian 16-bit candidates, each masked to the
//               bits of k - 10; the last one below k - 10 is the synthetic length (0 if none)
//   synthetic = the first `synthetic length` bytes of PRF("message", 8k)
// Returns the message when the padding is valid (00 02, at least 8 non-zero bytes, 00), else the
// synthetic message; which one is chosen with no branch or memory access that depends on it.
// `secret` is the key's raw decryption of implicit_rejection_probe. An error only for an
// internal failure (HMAC), which does not depend on `em`.
Result<SecretBytes> pkcs1_decode_implicit(const Crypto& c, const SecretBytes& em, const SecretBytes& secret,
                                          const Bytes& ciphertext);

// RSAES-OAEP decoding of `em` (k bytes) with `md` for the label digest and MGF1 (OpenSSL's
// constant-time decoder). A failure, whatever its cause, is the one error "decryption failed".
Result<SecretBytes> oaep_decode(const SecretBytes& em, const EVP_MD* md, const uint8_t* label, size_t label_len);

}  // namespace tpmkey
