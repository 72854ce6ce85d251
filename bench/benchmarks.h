// Registration of the benchmark families, in the order they run (bench/main.cc).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench/common.h"

namespace tpmkey::bench {

// The process rows' loop: each iteration runs `kinds` processes back to back, one of each kind,
// in an order that rotates, so that all kinds see the same machine (on a shared machine the speed
// of everything drifts by 10-30% within minutes; only times taken side by side give steady
// ratios). `one(i)` runs kind i once and returns "" or what went wrong, which ends the row
// (record_problem, SkipWithError). The iteration time is the sum of the iteration's times;
// `each`, if given, sees them (by kind) after every complete iteration.
struct Interleaved {
  int64_t iterations = 0;        // complete ones
  std::vector<double> mean_ms;   // by kind, over the complete iterations
  bool failed = false;
};
Interleaved interleave(benchmark::State& state, int kinds, const std::function<std::string(int)>& one,
                       const std::function<void(const std::vector<double>&)>& each = {});

// limit/ALG (password auth) or esys-session/ALG (salted, encrypted session): raw ESYS TPM2_Sign.
void register_raw_esys(bool with_session);
// limit/DEC: raw ESYS TPM2_RSA_Decrypt or TPM2_ECDH_ZGen (password auth), DEC from dec_name().
void register_raw_decrypt();
// tpmkey-warm-decrypt/DEC (EVP_PKEY_decrypt), tpmkey-warm-derive/ecdh-p256 (EVP_PKEY_derive);
// pkeyutl-decrypt/rsa2048-decrypt-oaep: one `openssl pkeyutl -decrypt` process per kind per
// iteration, a software key and tpmkey side by side (decrypt_bench.cc).
void register_decrypt();
// tpmkey-warm-{digestsign,pkeysign}/ALG, tpm2-openssl-warm-{digestsign,pkeysign}/ALG.
void register_warm(bool tpmkey, bool digest_sign);
// tpmkey-cold/ALG, tpm2-openssl-cold/ALG: a new library context, key and signature per iteration.
void register_cold(bool tpmkey);
// tpmkey-threads/ecdsa-p256 with 1, 2 and 4 threads on one library context and key.
void register_threads();
// pkeyutl-{software,tpmkey,tpm2-openssl}/ALG: one `openssl pkeyutl -sign` process per iteration.
void register_processes();
// agent-sign/ALG with 1 and 4 clients: SIGN_REQUEST round trips to a `tpmkey agent` process;
// login/ALG (only with an sshd port): `ssh ... true` through tpmkey agent, ssh-agent, a key file.
void register_agent();
// tls/ALG/KIND/T: mutual TLS 1.3 handshakes by tpmkey-tls-example with a software or tpmkey
// client key, T client threads, against openssl s_server (tls_bench.cc).
void register_tls();
inline std::string tls_row(Alg a, const char* kind, int threads) {
  return std::string("tls/") + (a == Alg::kEcdsaP256 ? "ecdsa-p256" : "rsa2048") + "/" + kind + "/" + std::to_string(threads);
}

}  // namespace tpmkey::bench
