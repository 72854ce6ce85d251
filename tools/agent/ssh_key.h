// SSH keys as the agent serves them: public key blobs, signatures in SSH's format, and the
// private keys of ADD_IDENTITY messages (docs/ssh.md). Works on any EVP_PKEY: a TPM key from the
// tpmkey provider, or a software key held by the default provider.
#pragma once

#include <cstdint>
#include <string>

#include "keystore/error.h"
#include "keystore/ossl.h"
#include "keystore/ssh_wire.h"

namespace tpmkey::agent {

// SIGN_REQUEST flags (draft-miller-ssh-agent): which hash an RSA key signs with.
inline constexpr uint32_t kRsaSha2_256 = 2;
inline constexpr uint32_t kRsaSha2_512 = 4;

// The public key blob: "ecdsa-sha2-nistpN" curve Q, "ssh-rsa" e n, or "ssh-ed25519" A.
Result<Bytes> public_blob(EVP_PKEY* pkey);
// The key type a blob starts with ("" if it is not a blob).
std::string blob_type(const Bytes& blob);

// Signs `data` with `pkey` (fetched in `libctx`) and returns SSH's signature blob: string
// algorithm, string signature (ECDSA: mpint r, mpint s). RSA signs with SHA-256 or SHA-512 as
// `flags` ask, and with SHA-1 ("ssh-rsa") only when neither is asked and `allow_sha1`.
Result<Bytes> ssh_sign(EVP_PKEY* pkey, OSSL_LIB_CTX* libctx, const uint8_t* data, size_t size, uint32_t flags,
                       bool allow_sha1);

// A public key blob as an EVP_PKEY of the default provider (Ed25519, ECDSA, RSA).
Result<EvpPkeyPtr> public_key_from_blob(const Bytes& blob, OSSL_LIB_CTX* libctx);
// Whether `sig_blob` (string algorithm, string signature) is a valid signature over `data` by the
// key `key_blob`, in an algorithm that goes with it (RSA: rsa-sha2-256 or -512).
bool ssh_verify(const Bytes& key_blob, OSSL_LIB_CTX* libctx, const uint8_t* sig_blob, size_t sig_size,
                const uint8_t* data, size_t size);

// A software key from an ADD_IDENTITY message, read from its key type on to just before the
// comment. Ed25519, ECDSA (P-256/384/521) and RSA (1024 bits and more, as OpenSSH); the halves must match.
// Its private parts live in OpenSSL's secure heap when the agent set one up.
struct PrivateKey {
  EvpPkeyPtr pkey;
  Bytes blob;
};
Result<PrivateKey> read_private_key(SshReader& r, OSSL_LIB_CTX* libctx);

}  // namespace tpmkey::agent
