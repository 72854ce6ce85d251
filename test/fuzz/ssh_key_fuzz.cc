// Fuzz target: the SSH key parsers of the agent (tools/agent/ssh_key.h): public key blobs
// (public_key_from_blob), signature checks (ssh_verify) and ADD_IDENTITY private keys
// (read_private_key). The first byte picks the parser. A blob that parses must encode back
// (public_blob) to a blob that parses to the same encoding; a private key's blob must parse as a
// public key.
#include <cstddef>
#include <cstdint>

#include <openssl/provider.h>

#include "keystore/ssh_wire.h"
#include "test/fuzz/fuzz_support.h"
#include "tools/agent/ssh_key.h"

namespace {

using namespace tpmkey;

// The default provider in a library context of its own, as the agent holds software keys.
OSSL_LIB_CTX* libctx() {
  static OSSL_LIB_CTX* ctx = [] {
    OSSL_LIB_CTX* c = OSSL_LIB_CTX_new();
    if (!c || !OSSL_PROVIDER_load(c, "default")) std::abort();
    return c;
  }();
  return ctx;
}

void check_public(const Bytes& blob) {
  auto pkey = agent::public_key_from_blob(blob, libctx());
  if (!pkey) return;
  auto encoded = agent::public_blob(pkey->get());
  TPMKEY_FUZZ_CHECK(encoded.ok());
  TPMKEY_FUZZ_CHECK(!agent::blob_type(*encoded).empty());
  auto again = agent::public_key_from_blob(*encoded, libctx());
  TPMKEY_FUZZ_CHECK(again.ok());
  auto encoded_again = agent::public_blob(again->get());
  TPMKEY_FUZZ_CHECK(encoded_again.ok() && *encoded_again == *encoded);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t which = data[0] % 3;
  ++data, --size;
  switch (which) {
    case 0:
      (void)agent::blob_type(Bytes(data, data + size));
      check_public(Bytes(data, data + size));
      break;
    case 1: {
      // string key blob, string signature blob, then the signed data.
      SshReader r(data, size);
      SshView key, sig;
      if (!r.string(&key) || !r.string(&sig)) return 0;
      const uint8_t* signed_data = sig.data + sig.size;
      (void)agent::ssh_verify(key.bytes(), libctx(), sig.data, sig.size, signed_data, r.left());
      break;
    }
    default: {
      SshReader r(data, size);
      auto key = agent::read_private_key(r, libctx());
      if (!key) return 0;
      TPMKEY_FUZZ_CHECK(key->pkey && !key->blob.empty());
      auto pub = agent::public_key_from_blob(key->blob, libctx());
      TPMKEY_FUZZ_CHECK(pub.ok());
      auto blob = agent::public_blob(key->pkey.get());
      TPMKEY_FUZZ_CHECK(blob.ok() && *blob == key->blob);
      break;
    }
  }
  return 0;
}
