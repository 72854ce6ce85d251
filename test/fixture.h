// The fixture base of the swtpm tests: what every one of them repeats. SetUp takes the TCTI of
// this binary's swtpm and makes a fresh directory with a keystore path in it; TearDown frees the
// library contexts made through lib() and fails the test if it left any transient object, loaded
// session or saved session in the TPM. Parameterized fixtures add
// ::testing::WithParamInterface<T> to it.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <vector>

#include <openssl/types.h>

#include "test/support.h"

namespace tpmkey::test {

class TpmTest : public ::testing::Test {
 protected:
  // `dir_prefix` names the test's directory under $TMPDIR.
  explicit TpmTest(std::string dir_prefix = "tpmkey-test");

  void SetUp() override;
  void TearDown() override;

  // An openssl.cnf in a fresh subdirectory of dir_ that activates tpmkey (talking to `tcti`, with
  // keystore_ and the `extra` lines) and default, in that order unless `tpmkey_first` is false.
  std::string cnf(const std::string& tcti, const std::string& extra = "", bool tpmkey_first = true);
  // A library context configured by such a file, freed in TearDown unless release()d first.
  OSSL_LIB_CTX* lib(const std::string& tcti, const std::string& extra = "", bool tpmkey_first = true);
  // Frees `l` in TearDown (unless release()d first); returns it.
  OSSL_LIB_CTX* track(OSSL_LIB_CTX* l);
  void release(OSSL_LIB_CTX* l);

  // Makes key NAME (EC P-256, or RSA with `bits`) in the TPM through `l` and stores it in keystore_.
  void make_key(OSSL_LIB_CTX* l, const std::string& name, const char* password = nullptr, size_t bits = 0);
  // Signs `msg` with `k` through `l`; the default provider alone verifies the signature.
  static bool sign_verifies(OSSL_LIB_CTX* l, EVP_PKEY* k, const std::string& msg);
  // The same with the key at `uri` (false if it does not load).
  static bool sign_and_verify(OSSL_LIB_CTX* l, const std::string& uri, const std::string& msg);

  // The tpmkey CLI with --tcti (tcti_ unless `tcti` is given) and --keystore keystore_, tpm2-tss
  // logging off.
  CommandResult tpmkey(std::vector<std::string> args, const std::string& tcti = "", int timeout_s = 120);
  // Evicts the persistent SRK that `tpmkey init` made at 0x81000001 (tpm2_evictcontrol).
  CommandResult evict_persistent_srk();
  // Another program holds an object slot: tpm2_createprimary leaves its primary key loaded on a
  // TPM without a resource manager. release_others() flushes every transient object.
  void hold_slot();
  void release_others();

  // prefix + n, for key names: appended, because GCC 12 at -O3 reports a false -Wrestrict
  // (GCC bug 105329) for `"literal" + std::to_string(n)`, which prepends to the temporary.
  static std::string numbered(const std::string& prefix, int n);

  std::string tcti_, dir_, keystore_;

 private:
  std::string dir_prefix_;
  std::vector<OSSL_LIB_CTX*> libs_;
  int cnfs_ = 0;
};

}  // namespace tpmkey::test
