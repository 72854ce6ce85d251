// Signing: TPM2_Sign of a digest hashed in software (a NULL ticket, unrestricted keys), and of a
// message the TPM hashes itself (TPM2_Hash or a hash sequence, for restricted keys).
#include <cstring>

#include "keystore/tpm/driver.h"

namespace tpmkey {

Result<TPMT_SIGNATURE> Tpm::sign_digest(Session* s, const Object& key, const SecretBytes& auth,
                                        const TPMT_SIG_SCHEME& scheme, const TPM2B_DIGEST& digest,
                                        const TPMT_TK_HASHCHECK& ticket, TSS2_RC* rc) {
  TPMT_SIGNATURE sig{};
  *rc = run_.run(
      s, TPM2_CC_Sign, {&key.name}, auth, {.encrypt_command = true},
      [&] { return Tss2_Sys_Sign_Prepare(run_.sys(), key.tpm_handle(), &digest, &scheme, &ticket); },
      [&] { return Tss2_Sys_Sign_Complete(run_.sys(), &sig); });
  if (*rc != TSS2_RC_SUCCESS) return error("TPM2_Sign", *rc);
  return sig;
}

Result<TPMT_SIGNATURE> Tpm::sign(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const SignRequest& req) {
  TPM2B_DIGEST digest{};
  if (req.digest.size() > sizeof digest.buffer) return make_error(Reason::kInvalidArgument, "digest is too long");
  digest.size = uint16_t(req.digest.size());
  std::memcpy(digest.buffer, req.digest.data(), req.digest.size());
  TPMT_TK_HASHCHECK validation{};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;
  const TPMT_SIG_SCHEME scheme = tpm_scheme(req.scheme);
  return operation<Result<TPMT_SIGNATURE>>([&]() -> Result<TPMT_SIGNATURE> {
    TPMT_SIGNATURE out{};
    Status st = with_key(id, kf, "TPM2_Sign", [&](const Object& key, Session* s) {
      TSS2_RC rc = TSS2_RC_SUCCESS;
      auto sig = sign_digest(s, key, auth, scheme, digest, validation, &rc);
      if (sig) out = *sig;
      return rc;
    });
    if (!st) return st.take_error();
    return out;
  });
}

TSS2_RC Tpm::tpm_hash(Session* s, TPM2_ALG_ID hash, const Bytes& message, TPMI_RH_HIERARCHY hierarchy,
                      TPM2B_DIGEST* digest, TPMT_TK_HASHCHECK* ticket) {
  constexpr size_t kChunk = TPM2_MAX_DIGEST_BUFFER;
  auto chunk = [&](size_t off) {
    TPM2B_MAX_BUFFER b{};
    b.size = uint16_t(std::min(kChunk, message.size() - off));
    std::memcpy(b.buffer, message.data() + off, b.size);
    return b;
  };
  if (message.size() <= kChunk) {
    TPM2B_MAX_BUFFER data = chunk(0);
    // No authorization: the session only encrypts the message on its way to the TPM.
    return run_.run(
        s, TPM2_CC_Hash, {}, no_auth(), {.encrypt_command = true},
        [&] { return Tss2_Sys_Hash_Prepare(run_.sys(), &data, hash, hierarchy); },
        [&] { return Tss2_Sys_Hash_Complete(run_.sys(), digest, ticket); });
  }
  // A hash sequence takes a slot until it completes. It gets a random password, sent encrypted
  // in the session (it is parameter 1), so that only tpmkey can add data to it: with an empty one,
  // a party on the bus could inject its own TPM2_SequenceUpdate.
  SecretBytes seq_auth;
  {
    uint8_t r[32];
    if (!crypto_.random(r, sizeof r)) return TSS2_ESYS_RC_GENERAL_FAILURE;
    seq_auth = SecretBytes(r, sizeof r);
    OPENSSL_cleanse(r, sizeof r);
  }
  TPM2B_AUTH auth{};
  auth.size = uint16_t(seq_auth.size());
  std::memcpy(auth.buffer, seq_auth.data(), seq_auth.size());
  TPMI_DH_OBJECT seq = 0;
  TSS2_RC rc = with_room(1, nullptr, nullptr, [&] {
    if (!s) return run_.plain([&] { return Tss2_Sys_HashSequenceStart(run_.sys(), nullptr, &auth, hash, &seq, nullptr); });
    return run_.run(
        s, TPM2_CC_HashSequenceStart, {}, no_auth(), {.encrypt_command = true},
        [&] { return Tss2_Sys_HashSequenceStart_Prepare(run_.sys(), &auth, hash); },
        [&] { return Tss2_Sys_HashSequenceStart_Complete(run_.sys(), &seq); });
  });
  OPENSSL_cleanse(&auth, sizeof auth);
  if (rc != TSS2_RC_SUCCESS) return rc;
  TransientHandle sequence(seq);
  const Bytes seq_name;  // a sequence object has no public area: its Name is empty
  size_t off = 0;
  for (; rc == TSS2_RC_SUCCESS && message.size() - off > kChunk; off += kChunk) {
    TPM2B_MAX_BUFFER data = chunk(off);
    rc = run_.run(
        s, TPM2_CC_SequenceUpdate, {&seq_name}, seq_auth, {.encrypt_command = true},
        [&] { return Tss2_Sys_SequenceUpdate_Prepare(run_.sys(), seq, &data); },
        [&] { return Tss2_Sys_SequenceUpdate_Complete(run_.sys()); });
  }
  if (rc == TSS2_RC_SUCCESS) {
    TPM2B_MAX_BUFFER data = chunk(off);
    rc = run_.run(
        s, TPM2_CC_SequenceComplete, {&seq_name}, seq_auth, {.encrypt_command = true},
        [&] { return Tss2_Sys_SequenceComplete_Prepare(run_.sys(), seq, &data, hierarchy); },
        [&] { return Tss2_Sys_SequenceComplete_Complete(run_.sys(), digest, ticket); });
  }
  if (rc == TSS2_RC_SUCCESS) sequence.abandon();  // completion flushed it
  else run_.flush(std::move(sequence));
  return rc;
}

Result<TPMT_SIGNATURE> Tpm::sign_message(ObjectId id, const KeyFile& kf, const SecretBytes& auth,
                                         const SignScheme& sign_scheme, const Bytes& message) {
  const TPMT_SIG_SCHEME scheme = tpm_scheme(sign_scheme);
  return operation<Result<TPMT_SIGNATURE>>([&]() -> Result<TPMT_SIGNATURE> {
    TPMT_SIGNATURE out{};
    Error hash_error;
    bool hash_failed = false;
    Status st = with_key(id, kf, "TPM2_Sign", [&](const Object& key, Session* s) {
      // The ticket must come from the key's hierarchy: owner for keys under the SRK, endorsement
      // for attestation keys made under the EK.
      TSS2_RC rc = TSS2_RC_SUCCESS;
      for (TPMI_RH_HIERARCHY h : {TPM2_RH_OWNER, TPM2_RH_ENDORSEMENT}) {
        TPM2B_DIGEST digest{};
        TPMT_TK_HASHCHECK ticket{};
        rc = tpm_hash(s, scheme.details.any.hashAlg, message, h, &digest, &ticket);
        if (rc != TSS2_RC_SUCCESS) {
          hash_failed = true;
          hash_error = error("hash in the TPM", rc);
          return rc;
        }
        auto sig = sign_digest(s, key, auth, scheme, digest, ticket, &rc);
        if (sig) {
          out = *sig;
          return rc;
        }
        if (tpm_base_code(rc) != TPM2_RC_TICKET) break;
      }
      return rc;
    });
    if (!st) {
      if (hash_failed) return hash_error;
      return st.take_error();
    }
    return out;
  });
}

}  // namespace tpmkey
