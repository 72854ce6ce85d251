// The reference rows, straight on tpm2-tss ESYS (no OpenSSL provider in between):
//   limit/ALG          TPM2_Sign with a loaded key and a cleartext password authorization
//                      (ESYS_TR_PASSWORD): the most the TPM can do through ESYS.
//   esys-session/ALG   the same with one reused salted (tpmKey = the primary) HMAC session that
//                      encrypts the command parameter (AES-128-CFB, SHA-256,
//                      CONTINUESESSION|DECRYPT): what a naive secure design gets from ESYS.
//   limit/DEC          TPM2_RSA_Decrypt (RSAES or OAEP SHA-256) or TPM2_ECDH_ZGen with a key of
//                      the decrypt usage, password auth: the reference for decrypt_bench.cc.
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
#include "keystore/public_key.h"

namespace tpmkey::bench {
namespace {

struct KeyBlob {
  TPM2B_PUBLIC pub{};
  TPM2B_PRIVATE priv{};
};
// Made on first use, reused by every run: signing keys, and keys with the decrypt usage.
std::optional<KeyBlob> g_ec_blob, g_rsa_blob, g_ec_dec_blob, g_rsa_dec_blob;

void check(TSS2_RC rc, const char* what) {
  if (rc != TSS2_RC_SUCCESS) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s failed (rc=0x%08x)", what, rc);
    throw std::runtime_error(buf);
  }
}

// The same templates tpmkey itself uses: the standard storage primary and an unrestricted
// signing key without a password (scheme chosen per TPM2_Sign), or a decryption (RSA) or key
// agreement (EC) key (decrypt usage, scheme chosen per TPM2_RSA_Decrypt).
TPM2B_PUBLIC key_template(bool rsa, unsigned usage) {
  KeyOptions opts;
  opts.spec = find_algorithm(rsa ? "rsa2048" : "ec-p256");
  opts.usage = usage;
  return tpmkey::key_template(opts);
}

TPMT_SIG_SCHEME scheme_for(Alg a) {
  const SigAlg alg = a == Alg::kEcdsaP256 ? SigAlg::kEcdsa : a == Alg::kRsaPkcs1 ? SigAlg::kRsaPkcs1 : SigAlg::kRsaPss;
  return tpm_scheme(SignScheme{alg, TPM2_ALG_SHA256});
}

// A loaded key (and optionally the session) for one run; flushed by the destructor.
class Loaded {
 public:
  Loaded(Esys& esys, Alg a, bool with_session) : Loaded(esys, is_rsa(a), kUsageSign, with_session) {}
  Loaded(Esys& esys, bool rsa, unsigned usage, bool with_session) : esys_(esys) {
    ESYS_CONTEXT* ctx = esys.get();
    TPM2B_SENSITIVE_CREATE sensitive{};
    TPM2B_PUBLIC tmpl = srk_template();
    TPM2B_DATA outside{};
    TPML_PCR_SELECTION pcrs{};
    check(Esys_CreatePrimary(ctx, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &tmpl,
                             &outside, &pcrs, &primary_, nullptr, nullptr, nullptr, nullptr),
          "TPM2_CreatePrimary");
    const bool dec = usage == kUsageDecrypt;
    std::optional<KeyBlob>& blob = rsa ? (dec ? g_rsa_dec_blob : g_rsa_blob) : (dec ? g_ec_dec_blob : g_ec_blob);
    if (!blob) {
      TPM2B_PUBLIC ktmpl = key_template(rsa, usage);
      TPM2B_PRIVATE* priv = nullptr;
      TPM2B_PUBLIC* pub = nullptr;
      check(Esys_Create(ctx, primary_, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &ktmpl, &outside,
                        &pcrs, &priv, &pub, nullptr, nullptr, nullptr),
            "TPM2_Create");
      blob = KeyBlob{*pub, *priv};
      Esys_Free(priv);
      Esys_Free(pub);
    }
    pub_ = &blob->pub;
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
  const TPMT_PUBLIC& pub() const { return pub_->publicArea; }
  ESYS_TR auth() const { return session_ == ESYS_TR_NONE ? ESYS_TR_PASSWORD : session_; }

 private:
  void flush(ESYS_TR& tr) {
    if (tr != ESYS_TR_NONE) Esys_FlushContext(esys_.get(), tr);
    tr = ESYS_TR_NONE;
  }
  Esys& esys_;
  const TPM2B_PUBLIC* pub_ = nullptr;
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

// limit/rsa2048-decrypt-{pkcs1,oaep}, limit/ecdh-p256: TPM2_RSA_Decrypt (RSAES, or OAEP with
// SHA-256) of one ciphertext made in software to the key's public half, or TPM2_ECDH_ZGen with
// the software peer key's point, with a password authorization. Every result is compared with the
// plaintext or with the software ECDH of the peer's private key and the TPM key's public half.
void raw_decrypt(benchmark::State& state, Dec d) {
  const std::string name = std::string("limit/") + dec_name(d);
  {
    std::optional<Esys> esys;
    std::optional<Loaded> loaded;
    TPM2B_PUBLIC_KEY_RSA cipher{};
    TPMT_RSA_DECRYPT scheme{};
    TPM2B_DATA label{};
    TPM2B_ECC_POINT peer_point{};
    std::vector<unsigned char> expected;
    try {
      esys.emplace();
      loaded.emplace(*esys, d != Dec::kEcdh, kUsageDecrypt, false);
      auto pub = tpmkey::public_pkey(loaded->pub(), nullptr);
      if (!pub) throw std::runtime_error("the key's public half: " + pub.error().text());
      if (d == Dec::kEcdh) {
        PkeyPtr peer_priv = ecdh_peer_private(), peer_pub = ecdh_peer_public();
        if (!peer_priv || !peer_pub) throw std::runtime_error("cannot read the peer key " + software_key_file(Alg::kEcdsaP256));
        PkeyPtr tpm_pub = public_copy(pub->get());
        expected = software_ecdh(peer_priv.get(), tpm_pub.get());
        unsigned char buf[65];
        size_t len = 0;
        if (expected.empty() ||
            EVP_PKEY_get_octet_string_param(peer_pub.get(), "encoded-pub-key", buf, sizeof buf, &len) != 1 ||
            len != 65 || buf[0] != 4)
          throw std::runtime_error("software ECDH or the peer point failed: " + ossl_errors());
        peer_point.point.x.size = 32;
        std::memcpy(peer_point.point.x.buffer, buf + 1, 32);
        peer_point.point.y.size = 32;
        std::memcpy(peer_point.point.y.buffer, buf + 33, 32);
      } else {
        PkeyPtr tpm_pub = public_copy(pub->get());
        const std::vector<unsigned char> c = tpm_pub ? encrypt_to(tpm_pub.get(), d) : std::vector<unsigned char>{};
        if (c.empty() || c.size() > sizeof cipher.buffer) throw std::runtime_error("software encryption failed: " + ossl_errors());
        cipher.size = uint16_t(c.size());
        std::memcpy(cipher.buffer, c.data(), c.size());
        scheme.scheme = d == Dec::kRsaOaep ? TPM2_ALG_OAEP : TPM2_ALG_RSAES;
        if (d == Dec::kRsaOaep) scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
        expected = plaintext();
      }
    } catch (const std::exception& e) {
      loaded.reset();
      esys.reset();
      record_problem(name + ": " + e.what());
      state.SkipWithError(e.what());
      check_tpm_clean(name);
      return;
    }
    int64_t failures = 0;
    const uint64_t before = counted_commands();
    for (auto _ : state) {
      TSS2_RC rc;
      bool same = false;
      if (d == Dec::kEcdh) {
        TPM2B_ECC_POINT* z = nullptr;
        rc = Esys_ECDH_ZGen(esys->get(), loaded->key(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &peer_point, &z);
        same = rc == TSS2_RC_SUCCESS && z->point.x.size == expected.size() &&
               std::memcmp(z->point.x.buffer, expected.data(), expected.size()) == 0;
        Esys_Free(z);
      } else {
        TPM2B_PUBLIC_KEY_RSA* m = nullptr;
        rc = Esys_RSA_Decrypt(esys->get(), loaded->key(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &cipher, &scheme,
                              &label, &m);
        same = rc == TSS2_RC_SUCCESS && m->size == expected.size() && std::memcmp(m->buffer, expected.data(), m->size) == 0;
        Esys_Free(m);
      }
      if (!same) {
        ++failures;
        char buf[96];
        std::snprintf(buf, sizeof buf, "%s failed or gave a wrong result (rc=0x%08x)",
                      d == Dec::kEcdh ? "TPM2_ECDH_ZGen" : "TPM2_RSA_Decrypt", rc);
        record_problem(name + ": " + buf);
        state.SkipWithError(buf);
        break;
      }
    }
    const uint64_t cmds = counted_commands() - before;
    state.SetItemsProcessed(state.iterations());
    state.counters["tpm_cmds/op"] = state.iterations() ? double(cmds) / double(state.iterations()) : 0;
    state.counters["failures"] = double(failures);
  }  // flushes the key, closes the connection
  check_tpm_clean(name);
}

}  // namespace

void register_raw_decrypt() {
  for (Dec d : kAllDecs) {
    std::string name = std::string("limit/") + dec_name(d);
    benchmark::RegisterBenchmark(name.c_str(), [d](benchmark::State& s) { raw_decrypt(s, d); })
        ->UseRealTime()
        ->MinTime(options().min_time)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMicrosecond);
  }
}

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
