// tpmkey's small files (key files, srk.pin, NAME.handle): read without ever blocking on or being
// redirected through something that is not a regular file, and written atomically.
#pragma once

#include <chrono>
#include <string>

#include "keystore/error.h"

namespace tpmkey {

// A key file (and every other file tpmkey reads) is at most this big.
inline constexpr size_t kMaxKeyFileSize = 64 * 1024;
// A writer's temporary file older than this is an orphan of a writer that was killed: the next
// writer in the same directory removes it. No write takes this long.
inline constexpr std::chrono::minutes kOrphanAge{10};

enum class Symlinks { kFollow, kRefuse };

// Reads a regular file of at most `max` bytes. FIFOs, devices, sockets and directories are
// refused without a blocking open; with Symlinks::kRefuse a symbolic link is refused too.
// Errors name the path; a missing file is Reason::kKeyNotFound.
Result<std::string> read_small_file(const std::string& path, size_t max, Symlinks symlinks);

// Writes `data` to `path` atomically with mode 0600: a temporary file in the same directory
// (".NAME.tmp-<16 hex>", O_EXCL), fsync, then link() into place (so an existing file is never
// replaced) and fsync the directory. Orphaned temporary files of killed writers are removed.
Status write_file_exclusive(const std::string& path, const std::string& data);
// Creates `dir` and its missing parents (mode 0700).
Status make_dirs(const std::string& dir);
Status fsync_dir(const std::string& dir);
// Removes temporary files in `dir` that a killed writer left (older than kOrphanAge).
void remove_orphaned_temporaries(const std::string& dir);
// Whether a directory entry is such a temporary file's name.
bool is_temporary_name(const std::string& file);

}  // namespace tpmkey
