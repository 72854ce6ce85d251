// The reference rows, straight on tpm2-tss ESYS (no OpenSSL provider in between):
//   limit/ALG          TPM2_Sign with a loaded key and a cleartext password authorization
//                      (ESYS_TR_PASSWORD): the most the TPM can do through ESYS.
//   esys-session/ALG   the same with one reused salted (tpmKey = the primary) HMAC session that
//                      encrypts the command parameter (AES-128-CFB, SHA-256,
//                      CONTINUESESSION|DECRYPT): what a naive secure design gets from ESYS.
// The keys are generated once with ESYS under a transient primary (the standard ECC P-256 storage
// template); each run recreates that primary, loads the key and flushes the primary again.
#include "bench/benchmarks.h"

#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include <benchmark/benchmark.h>

#include "bench/common.h"
#include "keystore/algorithm.h"

namespace tpmkey::bench {
namespace {

struct KeyBlob {
  TPM2B_PUBLIC pub{};
  TPM2B_PRIVATE priv{};
};
std::optional<KeyBlob> g_ec_blob, g_rsa_blob;  // made on first use, reused by every run

void check(TSS2_RC rc, const char* what) {
  if (rc != TSS2_RC_SUCCESS) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s failed (rc=0x%08x)", what, rc);
    throw std::runtime_error(buf);
  }
}

// The same templates tpmkey itself uses: the standard storage primary and an unrestricted
// signing key without a password (scheme chosen per TPM2_Sign).
TPM2B_PUBLIC key_template(bool rsa) {
  KeyOptions opts;
  opts.spec = find_algorithm(rsa ? "rsa2048" : "ec-p256");
  return tpmkey::key_template(opts);
}

TPMT_SIG_SCHEME scheme_for(Alg a) {
  const SigAlg alg = a == Alg::kEcdsaP256 ? SigAlg::kEcdsa : a == Alg::kRsaPkcs1 ? SigAlg::kRsaPkcs1 : SigAlg::kRsaPss;
  return tpm_scheme(SignScheme{alg, TPM2_ALG_SHA256});
}

// A loaded key (and optionally the session) for one run; flushed by the destructor.
class Loaded {
 public:
  Loaded(Esys& esys, Alg a, bool with_session) : esys_(esys) {
    ESYS_CONTEXT* ctx = esys.get();
    TPM2B_SENSITIVE_CREATE sensitive{};
    TPM2B_PUBLIC tmpl = srk_template();
    TPM2B_DATA outside{};
    TPML_PCR_SELECTION pcrs{};
    check(Esys_CreatePrimary(ctx, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &tmpl,
                             &outside, &pcrs, &primary_, nullptr, nullptr, nullptr, nullptr),
          "TPM2_CreatePrimary");
    std::optional<KeyBlob>& blob = is_rsa(a) ? g_rsa_blob : g_ec_blob;
    if (!blob) {
      TPM2B_PUBLIC ktmpl = key_template(is_rsa(a));
      TPM2B_PRIVATE* priv = nullptr;
      TPM2B_PUBLIC* pub = nullptr;
      check(Esys_Create(ctx, primary_, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &ktmpl, &outside,
                        &pcrs, &priv, &pub, nullptr, nullptr, nullptr),
            "TPM2_Create");
      blob = KeyBlob{*pub, *priv};
      Esys_Free(priv);
      Esys_Free(pub);
    }
    check(Esys_Load(ctx, primary_, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &blob->priv, &blob->pub, &key_),
          "TPM2_Load");
    if (with_session) {
      TPMT_SYM_DEF sym{};
      sym.algorithm = TPM2_ALG_AES;
      sym.keyBits.aes = 128;
      sym.mode.aes = TPM2_ALG_CFB;
      check(Esys_StartAuthSession(ctx, primary_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nullptr,
                                  TPM2_SE_HMAC, &sym, TPM2_ALG_SHA256, &session_),
            "TPM2_StartAuthSession (salted with the primary)");
      check(Esys_TRSess_SetAttributes(ctx, session_, TPMA_SESSION_CONTINUESESSION | TPMA_SESSION_DECRYPT, 0xFF),
            "Esys_TRSess_SetAttributes");
    }
    flush(primary_);  // the key and the session no longer need it
  }
  ~Loaded() {
    flush(key_);
    flush(session_);
    flush(primary_);
  }
  Loaded(const Loaded&) = delete;
  Loaded& operator=(const Loaded&) = delete;

  ESYS_TR key() const { return key_; }
  ESYS_TR auth() const { return session_ == ESYS_TR_NONE ? ESYS_TR_PASSWORD : session_; }

 private:
  void flush(ESYS_TR& tr) {
    if (tr != ESYS_TR_NONE) Esys_FlushContext(esys_.get(), tr);
    tr = ESYS_TR_NONE;
  }
  Esys& esys_;
  ESYS_TR primary_ = ESYS_TR_NONE, key_ = ESYS_TR_NONE, session_ = ESYS_TR_NONE;
};

void raw_sign(benchmark::State& state, Alg a, bool with_session) {
  const std::string name = std::string(with_session ? "esys-session/" : "limit/") + alg_name(a);
  {
    std::optional<Esys> esys;
    std::optional<Loaded> loaded;
    try {
      esys.emplace();
      loaded.emplace(*esys, a, with_session);
    } catch (const std::exception& e) {
      loaded.reset();
      esys.reset();
      state.SkipWithError(e.what());
      check_tpm_clean(name);
      return;
    }
    TPM2B_DIGEST digest{};
    digest.size = 32;
    std::memcpy(digest.buffer, message_digest(), 32);
    TPMT_SIG_SCHEME scheme = scheme_for(a);
    TPMT_TK_HASHCHECK validation{};
    validation.tag = TPM2_ST_HASHCHECK;
    validation.hierarchy = TPM2_RH_NULL;
    int64_t failures = 0;
    const uint64_t before = counted_commands();
    for (auto _ : state) {
      TPMT_SIGNATURE* sig = nullptr;
      TSS2_RC rc = Esys_Sign(esys->get(), loaded->key(), loaded->auth(), ESYS_TR_NONE, ESYS_TR_NONE, &digest,
                             &scheme, &validation, &sig);
      Esys_Free(sig);
      if (rc != TSS2_RC_SUCCESS) {
        ++failures;
        char buf[64];
        std::snprintf(buf, sizeof buf, "TPM2_Sign failed (rc=0x%08x)", rc);
        state.SkipWithError(buf);
        break;
      }
    }
    const uint64_t cmds = counted_commands() - before;
    state.SetItemsProcessed(state.iterations());
    state.counters["tpm_cmds/op"] = state.iterations() ? double(cmds) / double(state.iterations()) : 0;
    state.counters["failures"] = double(failures);
  }  // flushes the key and the session, closes the connection
  check_tpm_clean(name);
}

}  // namespace

void register_raw_esys(bool with_session) {
  for (Alg a : kAllAlgs) {
    std::string name = std::string(with_session ? "esys-session/" : "limit/") + alg_name(a);
    benchmark::RegisterBenchmark(name.c_str(), [a, with_session](benchmark::State& s) { raw_sign(s, a, with_session); })
        ->UseRealTime()
        ->MinTime(options().min_time)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace tpmkey::bench
