// Replays the committed seed corpora (test/fuzz/corpus/TARGET/) through each fuzz target's
// LLVMFuzzerTestOneInput, in the normal build: the parsers' invariants are checked on every
// test run, and under ASan/UBSan in the sanitizer build, without libFuzzer. A broken invariant
// aborts (fuzz_support.h), which fails the test with the target's message on stderr.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <ostream>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

// The entry points, renamed per target by test/fuzz/CMakeLists.txt.
#define TPMKEY_FUZZ_TARGET(name) extern "C" int tpmkey_fuzz_##name(const uint8_t* data, size_t size);
TPMKEY_FUZZ_TARGET(uri)
TPMKEY_FUZZ_TARGET(keyfile)
TPMKEY_FUZZ_TARGET(srk_pin)
TPMKEY_FUZZ_TARGET(ssh_wire)
TPMKEY_FUZZ_TARGET(private_key)
TPMKEY_FUZZ_TARGET(frame)
TPMKEY_FUZZ_TARGET(ssh_key)
TPMKEY_FUZZ_TARGET(agent)
TPMKEY_FUZZ_TARGET(tpm_response)
TPMKEY_FUZZ_TARGET(tpm)
TPMKEY_FUZZ_TARGET(params)
#undef TPMKEY_FUZZ_TARGET

namespace tpmkey::test {
namespace {

namespace fs = std::filesystem;
using Entry = int (*)(const uint8_t*, size_t);

struct Target {
  const char* name;
  Entry entry;
};

// Runs every file of the target's corpus (sorted, so a failure names the same file each time).
void replay(const Target& t) {
  const fs::path dir = fs::path(TPMKEY_FUZZ_CORPUS) / t.name;
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty()) << "no seeds in " << dir;
  for (const fs::path& f : files) {
    SCOPED_TRACE(f.string());
    std::ifstream in(f, std::ios::binary);
    ASSERT_TRUE(in) << f;
    const std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // libFuzzer passes a buffer of exactly the input's size; an empty input has no bytes at all.
    const std::vector<uint8_t> exact(data);
    EXPECT_EQ(t.entry(exact.empty() ? nullptr : exact.data(), exact.size()), 0);
  }
}

// ctest names each case by its target rather than by the bytes of the struct.
void PrintTo(const Target& t, std::ostream* os) { *os << t.name; }

class FuzzCorpus : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzCorpus, Replays) { replay(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Targets, FuzzCorpus,
                         ::testing::Values(Target{"uri", tpmkey_fuzz_uri}, Target{"keyfile", tpmkey_fuzz_keyfile},
                                           Target{"srk_pin", tpmkey_fuzz_srk_pin},
                                           Target{"ssh_wire", tpmkey_fuzz_ssh_wire},
                                           Target{"private_key", tpmkey_fuzz_private_key},
                                           Target{"frame", tpmkey_fuzz_frame}, Target{"ssh_key", tpmkey_fuzz_ssh_key},
                                           Target{"agent", tpmkey_fuzz_agent},
                                           Target{"tpm_response", tpmkey_fuzz_tpm_response},
                                           Target{"tpm", tpmkey_fuzz_tpm},
                                           Target{"params", tpmkey_fuzz_params}),
                         [](const ::testing::TestParamInfo<Target>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace tpmkey::test
