// What the fuzz targets share: a private scratch directory per process (for the parsers that
// only read files), writing an input into it, and the check that aborts on a broken invariant
// (libFuzzer and the replay tests both report an abort with the input that caused it).
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace tpmkey::fuzz {

// A 0700 directory made once per process and removed at exit, so runs never share files and a
// crash leaves nothing in the way of the next run. The path is never destroyed: a static
// string's destructor would run before the exit handler registered while it was being made.
inline const std::string& scratch_dir() {
  static const std::string* const dir = [] {
    auto* tmpl = new std::string((std::getenv("TMPDIR") ? std::string(std::getenv("TMPDIR")) : std::string("/tmp")) +
                                 "/tpmkey-fuzz.XXXXXX");
    if (!mkdtemp(tmpl->data())) std::abort();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return tmpl;
  }();
  return *dir;
}

// Replaces `path` with exactly `data` (a plain write: these are the files under test, not
// keystore entries, so no atomicity is wanted).
inline void write_input(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  for (size_t done = 0; done < size;) {
    const ssize_t n = write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += size_t(n);
  }
  close(fd);
}

// An invariant of the code under test does not hold: say which, then abort.
[[noreturn]] inline void broken(const char* what) {
  std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
  std::abort();
}
#define TPMKEY_FUZZ_CHECK(cond) \
  do {                          \
    if (!(cond)) ::tpmkey::fuzz::broken(#cond); \
  } while (0)

}  // namespace tpmkey::fuzz
