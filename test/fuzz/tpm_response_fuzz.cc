// Fuzz target: TPM responses to the commands tpmkey authorizes in its salted session
// (keystore/tpm/session.h, keystore/tpm/runner.h), answered by a malicious TPM. The TPM here is
// an in-process link (keystore/tpm/transport.h, "inprocess:tpm_response") that knows the session
// key, as the real TPM does, so its responses can carry a valid HMAC and fuzzing reaches past the
// check: parameter decryption, the nonce hand-over and tss2-sys's parsing of the parameters.
//
// Input: one byte choosing the commands (bits 0-2 the first, 3-5 the second, bit 6 RSA-PSS
// rather than ECDSA for TPM2_Sign), then one response per command the TPM is sent (the
// command, a resend after TPM_RC_RETRY, the flush of a session that fell out of step, a second
// command in the same session):
//   0  success, valid HMAC:  u8 nonceTPM size, nonceTPM, u8 session attributes, u16 size, parameters
//   1  the same with one HMAC byte flipped
//   2  an error:             u32 response code
//   3  raw bytes:            u16 size, the whole response as given
// When the input runs out, the TPM is unreachable.
//
// Invariants:
//   - the cleartext oracle: no command ever carries the key's password, the secret parameter (the
//     digest to sign, a new password, a new key's password) or the session key in the clear;
//   - a response whose HMAC does not verify is never accepted: the command fails.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "keystore/crypto.h"
#include "keystore/tpm/connection.h"
#include "keystore/tpm/kdf.h"
#include "keystore/tpm/runner.h"
#include "keystore/tpm/session.h"
#include "keystore/tpm/transport.h"
#include "test/fuzz/fake_tpm.h"
#include "test/fuzz/fuzz_support.h"

namespace tpmkey::fuzz {
namespace {

constexpr TPMI_SH_AUTH_SESSION kSessionHandle = 0x02000000;
constexpr TPM2_HANDLE kKeyHandle = 0x80000001, kParentHandle = 0x80000002;
constexpr size_t kMaxResponses = 8;

// The secrets the oracle looks for: distinctive, with no trailing zeros (Part 1 §19.6.5).
const uint8_t kPassword[] = "fuzz password: never in the clear";
const uint8_t kNewPassword[] = "fuzz new password, encrypted!";
const uint8_t kDigest[32] = {0x5a, 0x17, 0xc3, 0x9e, 0x01, 0x88, 0x42, 0xd7, 0x6b, 0xf0, 0x33, 0xa9, 0x14, 0x7e, 0xc5, 0x2d,
                             0x90, 0x6f, 0xe1, 0x08, 0xbb, 0x54, 0x3a, 0xc7, 0x29, 0xde, 0x71, 0x0c, 0x86, 0xf4, 0x1b, 0x65};
const uint8_t kSalt[32] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xf0, 0x01,
                           0x12, 0x23, 0x34, 0x45, 0x56, 0x67, 0x78, 0x89, 0x9a, 0xab, 0xbc, 0xcd, 0xde, 0xef, 0xf1, 0x02};

// What one run shares between the harness and its TPM.
struct Run {
  Input in{nullptr, 0};
  SecretBytes session_key;
  const uint8_t* secret = nullptr;  // the command's secret parameter
  size_t secret_size = 0;
  SecretBytes auth;  // the authValue the command's HMAC is keyed with
  size_t handles = 0;  // of the command under test
  TPM2_CC cc = 0;
  size_t responses = 0;
  bool last_corrupt = false;  // the last response to `cc` had a flipped HMAC byte
};
Run g_run;

// The malicious TPM. Commands to anything but `cc` (a flush) get the next response too.
class FuzzTpm : public FakeTpmLink {
 public:
  TSS2_RC transmit(const uint8_t* cmd, size_t size, Deadline) override {
    response_.clear();
    if (size < 10) broken("a command shorter than its header");
    // The cleartext oracle, over the whole command as it would cross the bus.
    if (contains(cmd, size, kPassword, sizeof kPassword - 1)) broken("the key's password in a command");
    if (g_run.secret && contains(cmd, size, g_run.secret, g_run.secret_size)) broken("a secret parameter in the clear");
    if (contains(cmd, size, g_run.session_key.data(), g_run.session_key.size())) broken("the session key in a command");
    const uint32_t cc = be32(cmd + 6);
    if (++g_run.responses > kMaxResponses) return TSS2_TCTI_RC_IO_ERROR;
    uint8_t kind = 0;
    if (!g_run.in.u8(&kind)) return TSS2_TCTI_RC_IO_ERROR;
    switch (kind % 4) {
      case 0:
      case 1: {
        if (cc == g_run.cc) g_run.last_corrupt = kind % 4 == 1;
        return answer(cmd, size, cc, kind % 4 == 1);
      }
      case 2: {
        uint32_t rc = 0;
        if (!g_run.in.u32(&rc)) return TSS2_TCTI_RC_IO_ERROR;
        if (rc == 0) rc = TPM2_RC_FAILURE;  // a success without a session area is case 3's
        if (cc == g_run.cc) g_run.last_corrupt = false;
        put16(response_, TPM2_ST_NO_SESSIONS);
        put32(response_, 10);
        put32(response_, rc);
        return TSS2_RC_SUCCESS;
      }
      default: {
        uint16_t n = 0;
        if (!g_run.in.u16(&n)) return TSS2_TCTI_RC_IO_ERROR;
        n = uint16_t(n % 4097);
        response_.resize(n);
        if (!g_run.in.take(response_.data(), n)) return TSS2_TCTI_RC_IO_ERROR;
        // Raw bytes carry no valid HMAC unless the fuzzer forged one: such a response that
        // tpmkey accepts would be a finding of the HMAC check itself, not of this harness.
        if (cc == g_run.cc) g_run.last_corrupt = false;
        return TSS2_RC_SUCCESS;
      }
    }
  }
 private:
  // A success response to a session command, HMAC'd as the TPM does (Part 1 §19.6.14-17): the
  // caller's nonce is read from the command's authorization area.
  TSS2_RC answer(const uint8_t* cmd, size_t size, uint32_t cc, bool corrupt) {
    uint8_t nonce_size = 0, attrs = 0;
    uint16_t param_size = 0;
    uint8_t nonce_tpm[64] = {};
    if (!g_run.in.u8(&nonce_size)) return TSS2_TCTI_RC_IO_ERROR;
    nonce_size = uint8_t(nonce_size % (sizeof nonce_tpm + 1));
    if (!g_run.in.take(nonce_tpm, nonce_size) || !g_run.in.u8(&attrs) || !g_run.in.u16(&param_size))
      return TSS2_TCTI_RC_IO_ERROR;
    param_size = uint16_t(param_size % 2049);
    Bytes params(param_size);
    if (!g_run.in.take(params.data(), param_size)) return TSS2_TCTI_RC_IO_ERROR;

    // The command's session: handle, nonceCaller, attributes (after the header, its handles and
    // the authorization area's size).
    Bytes nonce_caller;
    const size_t handles = cc == g_run.cc ? g_run.handles : 0;
    size_t at = 10 + 4 * handles + 4 + 4;
    if (at + 2 <= size) {
      const size_t n = be16(cmd + at);
      if (at + 2 + n <= size) nonce_caller.assign(cmd + at + 2, cmd + at + 2 + n);
    }
    // rpHash = H(responseCode || commandCode || parameters); HMAC over rpHash, nonceTPM,
    // nonceCaller and the attributes, keyed with sessionKey || authValue.
    uint8_t head[8] = {};
    head[4] = uint8_t(cc >> 24), head[5] = uint8_t(cc >> 16), head[6] = uint8_t(cc >> 8), head[7] = uint8_t(cc);
    uint8_t rp_hash[32];
    unsigned int len = 0;
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    const bool hashed = md && EVP_DigestInit_ex(md, EVP_sha256(), nullptr) && EVP_DigestUpdate(md, head, 8) &&
                        EVP_DigestUpdate(md, params.data(), params.size()) && EVP_DigestFinal_ex(md, rp_hash, &len);
    EVP_MD_CTX_free(md);
    if (!hashed) broken("SHA-256 failed");
    SecretBytes key = g_run.session_key;
    if (cc == g_run.cc) key.append(g_run.auth.data(), g_run.auth.size());
    Bytes mac_input(rp_hash, rp_hash + 32);
    mac_input.insert(mac_input.end(), nonce_tpm, nonce_tpm + nonce_size);
    mac_input.insert(mac_input.end(), nonce_caller.begin(), nonce_caller.end());
    mac_input.push_back(attrs);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), key.data(), int(key.size()), mac_input.data(), mac_input.size(), mac, &mac_len))
      broken("HMAC failed");
    if (corrupt) mac[mac_input[0] % mac_len] ^= 0x01;

    put16(response_, TPM2_ST_SESSIONS);
    put32(response_, 0);  // the size, below
    put32(response_, TPM2_RC_SUCCESS);
    put32(response_, uint32_t(params.size()));
    response_.insert(response_.end(), params.begin(), params.end());
    put16(response_, nonce_size);
    response_.insert(response_.end(), nonce_tpm, nonce_tpm + nonce_size);
    response_.push_back(attrs);
    put16(response_, uint16_t(mac_len));
    response_.insert(response_.end(), mac, mac + mac_len);
    const uint32_t total = uint32_t(response_.size());
    for (int i = 0; i < 4; ++i) response_[2 + size_t(i)] = uint8_t(total >> (24 - 8 * i));
    return TSS2_RC_SUCCESS;
  }
};

}  // namespace
}  // namespace tpmkey::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tpmkey;
  using namespace tpmkey::fuzz;
  const Crypto& crypto = crypto_with_link<FuzzTpm>("tpm_response");
  if (size < 1) return 0;
  g_run = Run{};
  g_run.in = Input{data + 1, size - 1};
  const uint8_t which = data[0];

  Connection conn("inprocess:tpm_response", Timeouts{});
  TPMKEY_FUZZ_CHECK(conn.open().ok());
  Runner runner(conn, crypto);
  Session session;
  TPM2B_NONCE nonce_caller{};
  TPMKEY_FUZZ_CHECK(session.new_start_nonce(crypto, &nonce_caller).ok());
  TPM2B_NONCE nonce_tpm{};
  nonce_tpm.size = 32;
  for (uint8_t i = 0; i < 32; ++i) nonce_tpm.buffer[i] = uint8_t(0xa0 + i);
  const SecretBytes salt(kSalt, sizeof kSalt);
  session.begin(crypto, kSessionHandle, salt, nonce_tpm);
  g_run.session_key = kdfa(crypto, TPM2_ALG_SHA256, salt, "ATH", std::span(nonce_tpm.buffer, nonce_tpm.size),
                           std::span(nonce_caller.buffer, nonce_caller.size), 256);
  TPMKEY_FUZZ_CHECK(g_run.session_key.size() == 32);

  const SecretBytes password(kPassword, sizeof kPassword - 1);
  const Bytes key_name(34, 0x4b), parent_name(34, 0x50);
  // The command, and a second one in the same session if the first one succeeded (or failed
  // without ending the session): what a long-lived process does next.
  for (int round = 0; round < 2 && session.active(); ++round) {
    TSS2_RC rc = TSS2_RC_SUCCESS;
    g_run.responses = 0;
    g_run.last_corrupt = false;
    g_run.secret = nullptr;
    g_run.secret_size = 0;
    g_run.auth = password;
    switch (((which >> (round * 3)) & 0x07) % 6) {
      case 0: {  // TPM2_Sign: the digest is parameter 1, encrypted
        g_run.cc = TPM2_CC_Sign, g_run.handles = 1, g_run.secret = kDigest, g_run.secret_size = sizeof kDigest;
        TPM2B_DIGEST digest{};
        digest.size = sizeof kDigest;
        std::memcpy(digest.buffer, kDigest, sizeof kDigest);
        TPMT_SIG_SCHEME scheme{};
        scheme.scheme = (which & 0x40) ? TPM2_ALG_RSAPSS : TPM2_ALG_ECDSA;
        scheme.details.any.hashAlg = TPM2_ALG_SHA256;
        TPMT_TK_HASHCHECK ticket{};
        ticket.tag = TPM2_ST_HASHCHECK;
        ticket.hierarchy = TPM2_RH_NULL;
        TPMT_SIGNATURE sig{};
        rc = runner.run(
            &session, TPM2_CC_Sign, {&key_name}, password, {.encrypt_command = true},
            [&] { return Tss2_Sys_Sign_Prepare(runner.sys(), kKeyHandle, &digest, &scheme, &ticket); },
            [&] { return Tss2_Sys_Sign_Complete(runner.sys(), &sig); });
        break;
      }
      case 1: {  // TPM2_RSA_Decrypt: the ciphertext goes encrypted, the message comes back encrypted
        g_run.cc = TPM2_CC_RSA_Decrypt, g_run.handles = 1;
        TPM2B_PUBLIC_KEY_RSA in{};
        in.size = 256;
        std::memset(in.buffer, 0x3c, in.size);
        TPMT_RSA_DECRYPT scheme{};
        scheme.scheme = TPM2_ALG_OAEP;
        scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
        TPM2B_DATA label{};
        TPM2B_PUBLIC_KEY_RSA out{};
        rc = runner.run(
            &session, TPM2_CC_RSA_Decrypt, {&key_name}, password, {.encrypt_command = true, .decrypt_response = true},
            [&] { return Tss2_Sys_RSA_Decrypt_Prepare(runner.sys(), kKeyHandle, &in, &scheme, &label); },
            [&] { return Tss2_Sys_RSA_Decrypt_Complete(runner.sys(), &out); });
        OPENSSL_cleanse(&out, sizeof out);
        break;
      }
      case 2: {  // TPM2_ECDH_ZGen: the shared point comes back encrypted
        g_run.cc = TPM2_CC_ECDH_ZGen, g_run.handles = 1;
        TPM2B_ECC_POINT in{};
        in.point.x.size = in.point.y.size = 32;
        std::memset(in.point.x.buffer, 0x21, 32);
        std::memset(in.point.y.buffer, 0x43, 32);
        TPM2B_ECC_POINT out{};
        rc = runner.run(
            &session, TPM2_CC_ECDH_ZGen, {&key_name}, password, {.decrypt_response = true},
            [&] { return Tss2_Sys_ECDH_ZGen_Prepare(runner.sys(), kKeyHandle, &in); },
            [&] { return Tss2_Sys_ECDH_ZGen_Complete(runner.sys(), &out); });
        break;
      }
      case 3: {  // TPM2_Create: the new key's password is in parameter 1, encrypted
        g_run.cc = TPM2_CC_Create, g_run.handles = 1, g_run.secret = kNewPassword;
        g_run.secret_size = sizeof kNewPassword - 1;
        g_run.auth = SecretBytes();  // the parent's: none
        TPM2B_SENSITIVE_CREATE sensitive{};
        sensitive.sensitive.userAuth.size = sizeof kNewPassword - 1;
        std::memcpy(sensitive.sensitive.userAuth.buffer, kNewPassword, sizeof kNewPassword - 1);
        TPM2B_PUBLIC in_public{};
        in_public.publicArea.type = TPM2_ALG_ECC;
        in_public.publicArea.nameAlg = TPM2_ALG_SHA256;
        in_public.publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
        in_public.publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
        in_public.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
        in_public.publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
        TPM2B_DATA outside{};
        TPML_PCR_SELECTION pcrs{};
        TPM2B_PRIVATE out_private{};
        TPM2B_PUBLIC out_public{};
        TPM2B_CREATION_DATA creation_data{};
        TPM2B_DIGEST creation_hash{};
        TPMT_TK_CREATION ticket{};
        rc = runner.run(
            &session, TPM2_CC_Create, {&parent_name}, SecretBytes(), {.encrypt_command = true},
            [&] {
              return Tss2_Sys_Create_Prepare(runner.sys(), kParentHandle, &sensitive, &in_public, &outside, &pcrs);
            },
            [&] {
              return Tss2_Sys_Create_Complete(runner.sys(), &out_private, &out_public, &creation_data,
                                              &creation_hash, &ticket);
            });
        OPENSSL_cleanse(&sensitive, sizeof sensitive);
        break;
      }
      case 4: {  // TPM2_ObjectChangeAuth: the new password is parameter 1, encrypted
        g_run.cc = TPM2_CC_ObjectChangeAuth, g_run.handles = 2, g_run.secret = kNewPassword;
        g_run.secret_size = sizeof kNewPassword - 1;
        TPM2B_AUTH new_auth{};
        new_auth.size = sizeof kNewPassword - 1;
        std::memcpy(new_auth.buffer, kNewPassword, new_auth.size);
        TPM2B_PRIVATE out{};
        rc = runner.run(
            &session, TPM2_CC_ObjectChangeAuth, {&key_name, &parent_name}, password, {.encrypt_command = true},
            [&] { return Tss2_Sys_ObjectChangeAuth_Prepare(runner.sys(), kKeyHandle, kParentHandle, &new_auth); },
            [&] { return Tss2_Sys_ObjectChangeAuth_Complete(runner.sys(), &out); });
        OPENSSL_cleanse(&new_auth, sizeof new_auth);
        break;
      }
      default: {  // TPM2_ReadClock, audited: the proof that the session is still tpmkey's
        g_run.cc = TPM2_CC_ReadClock, g_run.handles = 0;
        g_run.auth = SecretBytes();
        TPMS_TIME_INFO t{};
        rc = runner.run(
            &session, TPM2_CC_ReadClock, {}, SecretBytes(), {.audit = true},
            [&] { return Tss2_Sys_ReadClock_Prepare(runner.sys()); },
            [&] { return Tss2_Sys_ReadClock_Complete(runner.sys(), &t); });
        break;
      }
    }
    // A response with a wrong HMAC is never accepted.
    if (g_run.last_corrupt) TPMKEY_FUZZ_CHECK(rc != TSS2_RC_SUCCESS);
  }
  session.end();
  conn.close();
  return 0;
}
