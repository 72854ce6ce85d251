// Fuzz target: a whole malicious TPM behind the Tpm class (keystore/tpm/tpm.h), answering every
// command of an operation, the unauthenticated ones first: TPM2_GetCapability (slot limits, the
// lockout interval), TPM2_ReadPublic of the SRK and of persistent handles, TPM2_CreatePrimary,
// TPM2_StartAuthSession, TPM2_TestParms, the context commands and the flushes. tpm_response_fuzz.cc
// covers what comes after a valid HMAC; this target covers what tpmkey believes before it has one.
// The TPM is an in-process link (keystore/tpm/transport.h, "inprocess:tpm").
//
// Input: byte 0 chooses two operations (bits 0-2 and 3-5), bit 6 the cleartext-password opt-out
// (authorization=password), bit 7 a recorded SRK pin: then u8 handle kind (odd: 0x81000001,
// even: transient), u8 name size, the name. Then one response per command the TPM is sent:
//   0  success:  u16 size, the response after its 10-byte header (tag and size are filled in)
//   1  an error: u32 response code
//   2  raw bytes: u16 size, the whole response as given
// When the input runs out, or after kMaxResponses responses, the TPM is unreachable.
//
// Invariants: no crash, no hang, and the cleartext oracle: without the opt-out no command ever
// carries a key's password or the digest to sign in the clear, whatever the TPM answered before.
//
// Seeds: with TPMKEY_FUZZ_RECORD=FILE and TPMKEY_FUZZ_RECORD_TCTI=swtpm:host=...,port=..., the target
// forwards every command of one input to that real TPM and writes the input that replays its
// answers to FILE (the input's own responses are ignored); test/fuzz/corpus/tpm/ was made so.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "keystore/algorithm.h"
#include "keystore/crypto.h"
#include "keystore/keyfile.h"
#include "keystore/tpm/tpm.h"
#include "keystore/tpm/transport.h"
#include "test/fuzz/fake_tpm.h"
#include "test/fuzz/fuzz_support.h"

namespace tpmkey::fuzz {
namespace {

constexpr size_t kMaxResponses = 24;
const uint8_t kPassword[] = "tpm fuzz password, never in clear";
const uint8_t kNewPassword[] = "tpm fuzz new password, encrypted";
const uint8_t kDigest[32] = {0xd1, 0x9e, 0x27, 0x4a, 0xc3, 0x08, 0x7b, 0xe5, 0x61, 0x3f, 0xa2, 0x9c, 0x14, 0xb7, 0x58, 0x0d,
                             0xe9, 0x46, 0x2b, 0x83, 0xfa, 0x15, 0x6c, 0xd0, 0x37, 0x92, 0xae, 0x49, 0x05, 0xbb, 0x70, 0xc8};

struct Run {
  Input in;
  size_t responses = 0;
  bool oracle = true;  // false with the cleartext-password opt-out
  Bytes record;        // record mode: the responses of the input being written
  std::optional<SrkPin> learnt;  // the SRK trusted on first use
};
Run g_run;

const char* record_file() { return std::getenv("TPMKEY_FUZZ_RECORD"); }

// The malicious TPM, or in record mode the real one behind it.
class FuzzTpm : public FakeTpmLink {
 public:
  FuzzTpm() {
    if (!record_file()) return;
    const char* tcti = std::getenv("TPMKEY_FUZZ_RECORD_TCTI");
    const std::string spec = tcti ? tcti : "";
    if (spec.rfind("swtpm:", 0) != 0) broken("TPMKEY_FUZZ_RECORD_TCTI must be a swtpm: TCTI string");
    auto link = open_swtpm_link(spec.substr(6));
    if (!link) broken("the TPM to record from is unreachable");
    real_ = std::move(*link);
  }
  TSS2_RC transmit(const uint8_t* cmd, size_t size, Deadline deadline) override {
    response_.clear();
    if (size < 10) broken("a command shorter than its header");
    if (g_run.oracle) {
      if (contains(cmd, size, kPassword, sizeof kPassword - 1)) broken("a key's password in the clear");
      if (contains(cmd, size, kNewPassword, sizeof kNewPassword - 1)) broken("a new password in the clear");
      if (contains(cmd, size, kDigest, sizeof kDigest)) broken("the digest to sign in the clear");
    }
    if (++g_run.responses > kMaxResponses) return TSS2_TCTI_RC_IO_ERROR;
    if (real_) return record(cmd, size, deadline);
    uint8_t kind = 0;
    if (!g_run.in.take(&kind, 1)) return TSS2_TCTI_RC_IO_ERROR;
    uint16_t n = 0;
    switch (kind % 3) {
      case 0:
        if (!g_run.in.u16(&n)) return TSS2_TCTI_RC_IO_ERROR;
        n = uint16_t(n % 4087);
        // A success answers in the command's form: with an authorization area if it had one.
        put16(response_, uint16_t(cmd[0] << 8 | cmd[1]));
        put32(response_, 10u + n);
        put32(response_, TPM2_RC_SUCCESS);
        break;
      case 1: {
        uint8_t rc[4];
        if (!g_run.in.take(rc, 4)) return TSS2_TCTI_RC_IO_ERROR;
        put16(response_, TPM2_ST_NO_SESSIONS);
        put32(response_, 10);
        response_.insert(response_.end(), rc, rc + 4);
        return TSS2_RC_SUCCESS;
      }
      default:
        if (!g_run.in.u16(&n)) return TSS2_TCTI_RC_IO_ERROR;
        n = uint16_t(n % 4097);
        break;
    }
    const size_t at = response_.size();
    response_.resize(at + n);
    if (!g_run.in.take(response_.data() + at, n)) return TSS2_TCTI_RC_IO_ERROR;
    return TSS2_RC_SUCCESS;
  }
 private:
  // Sends the command to the real TPM and writes its answer as a kind-0 response (kind 2 if its
  // tag is not the command's).
  TSS2_RC record(const uint8_t* cmd, size_t size, Deadline deadline) {
    TSS2_RC rc = real_->transmit(cmd, size, deadline);
    size_t n = 0;
    if (rc == TSS2_RC_SUCCESS) rc = real_->receive(&n, nullptr, deadline);
    if (rc != TSS2_RC_SUCCESS || n < 10 || n > 4096) return TSS2_TCTI_RC_IO_ERROR;
    response_.resize(n);
    if (real_->receive(&n, response_.data(), deadline) != TSS2_RC_SUCCESS) return TSS2_TCTI_RC_IO_ERROR;
    const bool same_form = response_[0] == cmd[0] && response_[1] == cmd[1] && response_[6] == 0 &&
                           response_[7] == 0 && response_[8] == 0 && response_[9] == 0;
    Bytes& r = g_run.record;
    if (same_form) {
      r.push_back(0);
      put16(r, uint16_t(n - 10));
      r.insert(r.end(), response_.begin() + 10, response_.end());
    } else {
      r.push_back(2);
      put16(r, uint16_t(n));
      r.insert(r.end(), response_.begin(), response_.end());
    }
    return TSS2_RC_SUCCESS;
  }

  std::unique_ptr<Link> real_;
};

// A key file for a key of this SRK's: a real public area, a private blob no TPM made.
KeyFile key_file(bool with_password) {
  static const AlgorithmSpec* const spec = find_algorithm("ec-p256");
  KeyOptions opts;
  opts.spec = spec;
  opts.with_auth = with_password;
  KeyFile kf;
  kf.empty_auth = !with_password;
  kf.pub = key_template(opts);
  TPMS_ECC_POINT& q = kf.pub.publicArea.unique.ecc;
  q.x.size = q.y.size = 32;
  std::memset(q.x.buffer, 0x6b, 32);
  std::memset(q.y.buffer, 0x2e, 32);
  kf.priv.size = 126;
  std::memset(kf.priv.buffer, 0x9d, kf.priv.size);
  return kf;
}

void operate(Tpm& tpm, unsigned which) {
  const SecretBytes password(kPassword, sizeof kPassword - 1);
  const SecretBytes new_password(kNewPassword, sizeof kNewPassword - 1);
  switch (which % 8) {
    case 0: (void)tpm.srk_public(); break;
    case 1: (void)tpm.supports(*find_algorithm("ec-p256")); break;
    case 2: (void)tpm.public_of(0x81000002); break;
    case 3: {
      Tpm::Provisioned how{};
      (void)tpm.provision_srk(true, nullptr, &how);
      break;
    }
    case 4:
    case 5: {  // sign with a key without and with a password
      const bool with_password = which % 8 == 5;
      SignRequest req;
      req.digest.assign(kDigest, kDigest + sizeof kDigest);
      (void)tpm.sign(new_object_id(), key_file(with_password), with_password ? password : SecretBytes(), req);
      break;
    }
    case 6: (void)tpm.change_auth(key_file(true), password, new_password); break;
    default:
      (void)tpm.make_persistent(key_file(false), 0x81000010);
      tpm.park();
      break;
  }
}

}  // namespace
}  // namespace tpmkey::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tpmkey;
  using namespace tpmkey::fuzz;
  const Crypto& crypto = crypto_with_link<FuzzTpm>("tpm");
  if (size < 1) return 0;
  g_run = Run{};
  g_run.in = Input{data + 1, size - 1};
  const uint8_t flags = data[0];
  g_run.oracle = !(flags & 0x40);

  TpmOptions opts;
  opts.tcti = "inprocess:tpm";
  opts.password_auth = !g_run.oracle;
  opts.timeouts.busy = Millis(0);  // a slot shortage is reported at once, not waited out
  if (flags & 0x80) {
    uint8_t kind = 0, n = 0;
    SrkPin pin;
    if (!g_run.in.take(&kind, 1) || !g_run.in.take(&n, 1)) return 0;
    pin.handle = (kind & 1) ? kSrkHandle : 0;
    pin.name.resize(n);
    if (!g_run.in.take(pin.name.data(), n)) return 0;
    opts.pin = pin;
  }
  opts.on_first_srk = [](const SrkPin& learnt) {
    g_run.learnt = learnt;
    return Status::Ok();
  };
  {
    auto tpm = Tpm::create(std::move(opts), crypto);
    operate(*tpm, flags & 0x07);
    operate(*tpm, (flags >> 3) & 0x07);
    tpm->flush_all();
  }
  if (const char* file = record_file()) {
    // The recorded answers as an input that trusts the first SRK it meets, and, when one was
    // learnt, as one with it pinned (FILE-pinned).
    auto write = [](const std::string& path, const Bytes& bytes) {
      FILE* f = std::fopen(path.c_str(), "wb");
      if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0)
        broken("cannot write the recorded input");
    };
    Bytes out{uint8_t(flags & 0x7f)};
    out.insert(out.end(), g_run.record.begin(), g_run.record.end());
    write(file, out);
    if (g_run.learnt) {
      Bytes pinned{uint8_t(flags | 0x80), uint8_t(g_run.learnt->handle ? 1 : 0), uint8_t(g_run.learnt->name.size())};
      pinned.insert(pinned.end(), g_run.learnt->name.begin(), g_run.learnt->name.end());
      pinned.insert(pinned.end(), g_run.record.begin(), g_run.record.end());
      write(std::string(file) + "-pinned", pinned);
    }
  }
  return 0;
}
