// Decryption and key agreement with TPM keys through the tpmkey provider, against the raw TPM
// limit of the same operation (limit/DEC in raw_esys.cc):
//   tpmkey-warm-decrypt/rsa2048-decrypt-{pkcs1,oaep}  EVP_PKEY_decrypt_init_ex + EVP_PKEY_decrypt
//                          of one ciphertext (PKCS#1 v1.5, or OAEP with SHA-256 for OAEP and MGF1)
//                          on a new EVP_PKEY_CTX per iteration; key opened and used once first
//   tpmkey-warm-derive/ecdh-p256  EVP_PKEY_derive_init + set_peer + EVP_PKEY_derive (TPM2_ECDH_ZGen)
//                          with the software peer key (soft-ec.pem's public half)
//   pkeyutl-decrypt/DEC    one-shot `openssl pkeyutl -decrypt` (or `-derive -peerkey`) processes,
//                          a software key and the tpmkey key side by side in each iteration (the
//                          order alternates), as the one-shot signing rows run; counters <kind>_ms
//                          and, from one more run through the counting TCTI, <kind>_cmds
// The keys: tpm2:bench-rsa-dec (RSA-2048) and tpm2:bench-ecdh (EC P-256), made by run.sh with the
// decrypt usage. Every result is checked: the plaintext against the original, the secret against
// the software ECDH of the peer's private key and the TPM key's public half.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#include "bench/benchmarks.h"
#include "bench/common.h"

namespace tpmkey::bench {
namespace {

// The TPM key's public half as a software key (run.sh wrote it: bench-rsa-dec.pub, bench-ecdh.pub).
std::string tpm_public_file(Dec d) { return options().workdir + (d == Dec::kEcdh ? "/bench-ecdh.pub" : "/bench-rsa-dec.pub"); }
std::string software_public_file(Dec d) { return options().workdir + (d == Dec::kEcdh ? "/soft-ec.pub" : "/soft-rsa.pub"); }

// The RSA decryption parameters for d.
struct DecParams {
  char pkcs1[6] = "pkcs1";
  char oaep[5] = "oaep";
  char sha256[7] = "SHA256";
  char sha256_mgf[7] = "SHA256";
  OSSL_PARAM p[4];
  explicit DecParams(Dec d) {
    int n = 0;
    if (d == Dec::kRsaOaep) {
      p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, oaep, 0);
      p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, sha256, 0);
      p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, sha256_mgf, 0);
    } else {
      p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, pkcs1, 0);
    }
    p[n] = OSSL_PARAM_construct_end();
  }
};

// One operation through the provider: a decryption of `input` (RSA) or a derivation with `peer`.
bool tpmkey_op(OSSL_LIB_CTX* libctx, EVP_PKEY* key, Dec d, const std::vector<unsigned char>& input, EVP_PKEY* peer,
               std::vector<unsigned char>& out) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(libctx, key, nullptr));
  out.resize(512);
  size_t len = out.size();
  if (!ctx) return false;
  if (d == Dec::kEcdh) {
    if (EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer) != 1 ||
        EVP_PKEY_derive(ctx.get(), out.data(), &len) != 1)
      return false;
  } else {
    DecParams params(d);
    if (EVP_PKEY_decrypt_init_ex(ctx.get(), params.p) != 1 ||
        EVP_PKEY_decrypt(ctx.get(), out.data(), &len, input.data(), input.size()) != 1)
      return false;
  }
  out.resize(len);
  return true;
}

// What the operation must give: the plaintext, or the software ECDH of the peer's private key and
// the TPM key's public half. `input` receives the ciphertext (RSA).
std::vector<unsigned char> expected_result(EVP_PKEY* tpm_key, Dec d, std::vector<unsigned char>& input) {
  PkeyPtr pub = public_copy(tpm_key);
  if (!pub) throw std::runtime_error("the key's public half: " + ossl_errors());
  if (d == Dec::kEcdh) {
    PkeyPtr peer = ecdh_peer_private();
    std::vector<unsigned char> z = peer ? software_ecdh(peer.get(), pub.get()) : std::vector<unsigned char>{};
    if (z.empty()) throw std::runtime_error("software ECDH failed: " + ossl_errors());
    return z;
  }
  input = encrypt_to(pub.get(), d);
  if (input.empty()) throw std::runtime_error("software encryption failed: " + ossl_errors());
  return plaintext();
}

void warm(benchmark::State& state, Dec d) {
  const std::string name = std::string(d == Dec::kEcdh ? "tpmkey-warm-derive/" : "tpmkey-warm-decrypt/") + dec_name(d);
  {
    LibCtxPtr libctx;
    PkeyPtr key, peer;
    std::vector<unsigned char> input, expected, out;
    try {
      libctx = tpmkey_libctx();
      key = load_private_key(libctx.get(), tpmkey_dec_uri(d), nullptr);
      expected = expected_result(key.get(), d, input);
      if (d == Dec::kEcdh && !(peer = ecdh_peer_public())) throw std::runtime_error("cannot read the peer key");
      // Warm-up: connects, loads the parent and the key. Its result must be right.
      if (!tpmkey_op(libctx.get(), key.get(), d, input, peer.get(), out))
        throw std::runtime_error("the first operation failed: " + ossl_errors());
      if (out != expected) throw std::runtime_error("the first operation gave a wrong result");
    } catch (const std::exception& e) {
      key.reset();
      libctx.reset();
      record_problem(name + ": " + e.what());
      state.SkipWithError(e.what());
      check_tpm_clean(name);
      return;
    }
    int64_t failures = 0;
    const uint64_t before = tpmkey_commands(libctx.get());
    for (auto _ : state) {
      if (!tpmkey_op(libctx.get(), key.get(), d, input, peer.get(), out) || out != expected) {
        ++failures;
        record_problem(name + ": the operation failed or gave a wrong result: " + ossl_errors());
        state.SkipWithError("operation failed");
        break;
      }
    }
    const uint64_t cmds = tpmkey_commands(libctx.get()) - before;
    state.SetItemsProcessed(state.iterations());
    state.counters["tpm_cmds/op"] = state.iterations() ? double(cmds) / double(state.iterations()) : 0;
    state.counters["failures"] = double(failures);
    key.reset();  // before the library context that holds its provider
  }
  check_tpm_clean(name);
}

// --- one-shot processes ---

enum class Kind { kSoftware, kTpmkey };
const char* kind_name(Kind k) { return k == Kind::kSoftware ? "software" : "tpmkey"; }

struct ProcessCase {
  Command cmd;
  std::string out, log;
  std::vector<unsigned char> expected;
};

std::string write_bytes(const std::string& path, const std::vector<unsigned char>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
  return path;
}

// The pkeyutl command of one kind, its input files and its expected output. The software key
// decrypts a ciphertext made for it; for ECDH the software key soft-ec.pem derives with the TPM
// key's public half as the peer, which gives the same secret as the TPM key with soft-ec's.
ProcessCase process_case(Kind k, Dec d, const std::string& tcti) {
  const std::string tag = std::string("pkeyutl-decrypt-") + kind_name(k) + "-" + dec_name(d);
  ProcessCase c;
  c.out = options().workdir + "/" + tag + ".out";
  c.log = options().workdir + "/" + tag + ".log";
  c.cmd.argv = {"openssl", "pkeyutl"};
  for (const char* drop : {"TPMKEY_TCTI", "TPM2OPENSSL_TCTI", "TPMKEY_BENCH_COUNT_FILE", "OPENSSL_MODULES", "TPMKEY_AGENT"})
    c.cmd.env.push_back(drop);
  PkeyPtr tpm_pub = read_public_key(tpm_public_file(d));
  if (!tpm_pub) throw std::runtime_error("cannot read " + tpm_public_file(d));
  if (k == Kind::kSoftware) {
    c.cmd.argv.insert(c.cmd.argv.end(), {"-inkey", software_key_file(d == Dec::kEcdh ? Alg::kEcdsaP256 : Alg::kRsaPkcs1)});
  } else {
    c.cmd.argv.insert(c.cmd.argv.end(), {"-provider", "tpmkey", "-provider", "default", "-inkey", tpmkey_dec_uri(d)});
    c.cmd.env.push_back("OPENSSL_MODULES=" + options().provider_dir);
    c.cmd.env.push_back("TPMKEY_TCTI=" + tcti);
    c.cmd.env.push_back("TPMKEY_KEYSTORE=" + options().keystore);
    c.cmd.env.push_back("TPMKEY_AGENT=off");
  }
  if (d == Dec::kEcdh) {
    PkeyPtr peer = ecdh_peer_private();
    c.expected = peer ? software_ecdh(peer.get(), tpm_pub.get()) : std::vector<unsigned char>{};
    if (c.expected.empty()) throw std::runtime_error("software ECDH failed: " + ossl_errors());
    c.cmd.argv.insert(c.cmd.argv.end(),
                      {"-derive", "-peerkey", k == Kind::kSoftware ? tpm_public_file(d) : software_public_file(d)});
  } else {
    PkeyPtr pub = k == Kind::kSoftware ? read_public_key(software_public_file(d)) : std::move(tpm_pub);
    const std::vector<unsigned char> ct = pub ? encrypt_to(pub.get(), d) : std::vector<unsigned char>{};
    if (ct.empty()) throw std::runtime_error("software encryption failed: " + ossl_errors());
    c.cmd.argv.insert(c.cmd.argv.end(), {"-decrypt", "-in", write_bytes(options().workdir + "/" + tag + ".ct", ct)});
    if (d == Dec::kRsaOaep)
      c.cmd.argv.insert(c.cmd.argv.end(), {"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
                                           "-pkeyopt", "rsa_mgf1_md:sha256"});
    c.expected = plaintext();
  }
  c.cmd.argv.insert(c.cmd.argv.end(), {"-out", c.out});
  return c;
}

// Runs one process of the case; "" if it exited 0 and wrote the expected result, else why not.
std::string run_case(const ProcessCase& c) {
  std::remove(c.out.c_str());
  const int status = run(c.cmd, c.log);
  if (status != 0) return "exit status " + std::to_string(status) + ": " + read_all(c.log);
  const std::string got = read_all(c.out);
  if (got.size() != c.expected.size() || std::memcmp(got.data(), c.expected.data(), got.size()) != 0)
    return "wrong result (" + std::to_string(got.size()) + " bytes)";
  return "";
}

void process(benchmark::State& state, Dec d) {
  const std::string name = std::string("pkeyutl-decrypt/") + dec_name(d);
  constexpr Kind kKinds[] = {Kind::kSoftware, Kind::kTpmkey};
  std::optional<ProcessCase> timed[2];
  try {
    for (int i = 0; i < 2; ++i) timed[i].emplace(process_case(kKinds[i], d, options().tcti));
  } catch (const std::exception& e) {
    record_problem(name + ": " + e.what());
    state.SkipWithError(e.what());
    return;
  }
  const Interleaved r = interleave(state, 2, [&](int i) -> std::string {
    const std::string why = run_case(*timed[i]);
    return why.empty() ? "" : name + " (" + kind_name(kKinds[i]) + "): " + why;
  });
  int64_t failures = r.failed ? 1 : 0;
  state.SetItemsProcessed(state.iterations());
  for (int i = 0; i < 2; ++i) state.counters[std::string(kind_name(kKinds[i])) + "_ms"] = r.mean_ms[size_t(i)];
  // One more tpmkey process through the counting TCTI: its TPM commands (written at exit).
  if (!failures) {
    try {
      ProcessCase counted = process_case(Kind::kTpmkey, d, counting_tcti());
      const std::string count_file = options().workdir + "/" + name.substr(name.find('/') + 1) + ".count";
      std::remove(count_file.c_str());
      counted.cmd.env.push_back("TPMKEY_BENCH_COUNT_FILE=" + count_file);
      const std::string why = run_case(counted);
      if (!why.empty()) throw std::runtime_error("the counted run: " + why);
      uint64_t total = 0;
      std::istringstream in(read_all(count_file));
      for (uint64_t c; in >> c;) total += c;
      state.counters["tpmkey_cmds"] = double(total);
    } catch (const std::exception& e) {
      ++failures;
      record_problem(name + ": " + e.what());
    }
  }
  state.counters["software_cmds"] = 0;
  state.counters["failures"] = double(failures);
  check_tpm_clean(name);
}

}  // namespace

void register_decrypt() {
  for (Dec d : kAllDecs) {
    std::string name = std::string(d == Dec::kEcdh ? "tpmkey-warm-derive/" : "tpmkey-warm-decrypt/") + dec_name(d);
    benchmark::RegisterBenchmark(name.c_str(), [d](benchmark::State& s) { warm(s, d); })
        ->UseRealTime()
        ->MinTime(options().min_time)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMicrosecond);
  }
  for (Dec d : kAllDecs) {
    std::string name = std::string("pkeyutl-decrypt/") + dec_name(d);
    benchmark::RegisterBenchmark(name.c_str(), [d](benchmark::State& s) { process(s, d); })
        ->UseManualTime()
        ->Iterations(options().process_iterations)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace tpmkey::bench
