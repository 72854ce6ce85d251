// Signing through OpenSSL 3: tpmkey and tpm2-openssl, each in a private OSSL_LIB_CTX configured by
// an openssl.cnf (default + the TPM provider).
//   *-warm-digestsign/ALG  EVP_DigestSignInit_ex + EVP_DigestSign of a 64-byte message per iteration
//                          (SHA-256 in software), key opened and used once before timing
//   *-warm-pkeysign/ALG    EVP_PKEY_sign_init_ex + EVP_PKEY_sign of a SHA-256 digest per iteration
//   *-cold/ALG             per iteration: new libctx + config + providers, open the key, one
//                          EVP_DigestSign, free everything (the connection is closed each time)
//   tpmkey-threads/ecdsa-p256/threads:N  N threads, one libctx and EVP_PKEY, an EVP_MD_CTX each
// TPM commands: tpmkey's own counter (provider parameter tpmkey-tpm-commands); for tpm2-openssl the
// counting TCTI module (bench/counting_tcti.cc) sits between it and swtpm.
#include <atomic>
#include <barrier>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <benchmark/benchmark.h>

#include "bench/benchmarks.h"
#include "bench/common.h"

namespace tpmkey::bench {
namespace {

// One provider's library context and key; reads that provider's TPM command count.
struct Signer {
  bool tpmkey;
  LibCtxPtr libctx;
  PkeyPtr key;

  // counting: tpmkey too goes through the counting TCTI (tpm2-openssl always does).
  Signer(bool is_tpmkey, Alg a, bool counting = false) : tpmkey(is_tpmkey) {
    libctx = tpmkey ? tpmkey_libctx(counting) : tpm2_openssl_libctx();
    key = load_private_key(libctx.get(), tpmkey ? tpmkey_uri(a) : tpm2_openssl_key_file(a), propq());
  }
  ~Signer() {
    key.reset();  // before the library context that holds its provider
    libctx.reset();
  }
  const char* propq() const { return tpmkey ? nullptr : kTpm2OpensslPropq; }
  uint64_t commands() const { return tpmkey ? tpmkey_commands(libctx.get()) : counted_commands(); }
};

const char* who(bool tpmkey) { return tpmkey ? "tpmkey" : "tpm2-openssl"; }

void warm_sign(benchmark::State& state, bool tpmkey, Alg a, bool digest) {
  const std::string name = std::string(who(tpmkey)) + (digest ? "-warm-digestsign/" : "-warm-pkeysign/") + alg_name(a);
  {
    std::optional<Signer> s;
    MdCtxPtr md(EVP_MD_CTX_new());
    std::vector<unsigned char> sig;
    auto sign_once = [&] {
      return digest ? digest_sign(s->libctx.get(), s->key.get(), a, s->propq(), md.get(), sig)
                    : pkey_sign(s->libctx.get(), s->key.get(), a, s->propq(), sig);
    };
    try {
      s.emplace(tpmkey, a);
      // Warm-up: connects, loads the parent and the key. Its signature must verify.
      if (!sign_once()) throw std::runtime_error("first signature failed: " + ossl_errors());
      if (!verify(s->key.get(), a, sig)) throw std::runtime_error("the signature does not verify: " + ossl_errors());
    } catch (const std::exception& e) {
      md.reset();
      s.reset();
      record_problem(name + ": " + e.what());
      state.SkipWithError(e.what());
      check_tpm_clean(name);
      return;
    }
    int64_t failures = 0;
    const uint64_t before = s->commands();
    for (auto _ : state) {
      if (!sign_once()) {
        ++failures;
        record_problem(name + ": signature failed: " + ossl_errors());
        state.SkipWithError("signature failed");
        break;
      }
    }
    const uint64_t cmds = s->commands() - before;
    state.SetItemsProcessed(state.iterations());
    state.counters["tpm_cmds/op"] = state.iterations() ? double(cmds) / double(state.iterations()) : 0;
    state.counters["failures"] = double(failures);
  }  // frees the key and the library context: the provider closes its connection
  check_tpm_clean(name);
}

void cold_sign(benchmark::State& state, bool tpmkey, Alg a) {
  const std::string name = std::string(who(tpmkey)) + "-cold/" + alg_name(a);
  int64_t failures = 0;
  std::vector<unsigned char> sig;
  // Both providers talk through the counting TCTI here, so the count covers a whole iteration:
  // connect, parent and key load, the signature, and the flushes when the libctx is freed.
  const uint64_t before = counted_commands();
  for (auto _ : state) {
    try {
      Signer s(tpmkey, a, /*counting=*/true);
      MdCtxPtr md(EVP_MD_CTX_new());
      if (!digest_sign(s.libctx.get(), s.key.get(), a, s.propq(), md.get(), sig))
        throw std::runtime_error("signature failed: " + ossl_errors());
    } catch (const std::exception& e) {
      ++failures;
      record_problem(name + ": " + e.what());
      state.SkipWithError(e.what());
      break;
    }
  }
  const uint64_t cmds = counted_commands() - before;
  state.SetItemsProcessed(state.iterations());
  state.counters["tpm_cmds/op"] = state.iterations() ? double(cmds) / double(state.iterations()) : 0;
  state.counters["failures"] = double(failures);
  check_tpm_clean(name);
}

// --- threads: one shared libctx and key ---

struct Shared {
  std::optional<Signer> signer;
  std::string error;
  uint64_t before = 0;
  std::atomic<int64_t> signatures{0};
  std::unique_ptr<std::barrier<>> done;
};
Shared g_shared;

void threads_setup(const benchmark::State& state) {
  g_shared.error.clear();
  g_shared.signatures = 0;
  g_shared.done = std::make_unique<std::barrier<>>(state.threads());
  try {
    g_shared.signer.emplace(true, Alg::kEcdsaP256);
    MdCtxPtr md(EVP_MD_CTX_new());
    std::vector<unsigned char> sig;
    if (!digest_sign(g_shared.signer->libctx.get(), g_shared.signer->key.get(), Alg::kEcdsaP256, nullptr, md.get(),
                     sig))
      throw std::runtime_error("first signature failed: " + ossl_errors());
    g_shared.before = g_shared.signer->commands();
  } catch (const std::exception& e) {
    g_shared.error = e.what();
    record_problem("tpmkey-threads: " + g_shared.error);
  }
}

void threads_teardown(const benchmark::State& state) {
  g_shared.signer.reset();
  g_shared.done.reset();
  check_tpm_clean("tpmkey-threads/ecdsa-p256/threads:" + std::to_string(state.threads()));
}

void threads_sign(benchmark::State& state) {
  if (!g_shared.error.empty()) {
    state.SkipWithError(g_shared.error.c_str());
    return;
  }
  OSSL_LIB_CTX* libctx = g_shared.signer->libctx.get();
  EVP_PKEY* key = g_shared.signer->key.get();
  MdCtxPtr md(EVP_MD_CTX_new());
  std::vector<unsigned char> sig;
  int64_t failures = 0;
  for (auto _ : state) {
    if (!digest_sign(libctx, key, Alg::kEcdsaP256, nullptr, md.get(), sig)) {
      ++failures;
      ossl_errors();  // clear this thread's queue; failures are counted, the loop goes on
    }
  }
  g_shared.signatures += state.iterations();
  g_shared.done->arrive_and_wait();  // every thread has stopped signing
  state.SetItemsProcessed(state.iterations());  // summed over threads: aggregate signatures/s
  state.counters["failures"] = double(failures);  // summed over threads
  if (state.thread_index() == 0) {
    const uint64_t cmds = g_shared.signer->commands() - g_shared.before;
    const int64_t n = g_shared.signatures.load();
    state.counters["tpm_cmds/op"] = n ? double(cmds) / double(n) : 0;  // only thread 0 reports it
  }
  if (failures) record_problem("tpmkey-threads: " + std::to_string(failures) + " failed signatures");
}

}  // namespace

void register_warm(bool tpmkey, bool digest) {
  for (Alg a : kAllAlgs) {
    std::string name = std::string(who(tpmkey)) + (digest ? "-warm-digestsign/" : "-warm-pkeysign/") + alg_name(a);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { warm_sign(s, tpmkey, a, digest); })
        ->UseRealTime()
        ->MinTime(options().min_time)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMicrosecond);
  }
}

void register_cold(bool tpmkey) {
  for (Alg a : kAllAlgs) {
    std::string name = std::string(who(tpmkey)) + "-cold/" + alg_name(a);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { cold_sign(s, tpmkey, a); })
        ->UseRealTime()
        ->Iterations(options().cold_iterations)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMillisecond);
  }
}

void register_threads() {
  benchmark::RegisterBenchmark("tpmkey-threads/ecdsa-p256", threads_sign)
      ->Setup(threads_setup)
      ->Teardown(threads_teardown)
      ->Threads(1)
      ->Threads(2)
      ->Threads(4)
      ->UseRealTime()
      ->MinTime(options().min_time)
      ->Repetitions(options().repetitions)
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace tpmkey::bench
