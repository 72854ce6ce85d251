// tpmkey's small files (key files, srk.pin, NAME.handle): read without ever blocking on or being
// redirected through something that is not a regular file, and written atomically. The
// keystore's permission rule (docs/configuration.md#who-may-write-the-keystore): what decides
// which SRK and which keys are trusted must be writable only by the user and root.
#pragma once

#include <chrono>
#include <string>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

// A key file (and every other file tpmkey reads) is at most this big.
inline constexpr size_t kMaxKeyFileSize = 64 * 1024;
// A writer's temporary file older than this is an orphan of a writer that was killed: the next
// writer in the same directory removes it. No write takes this long.
inline constexpr std::chrono::minutes kOrphanAge{10};

enum class Symlinks { kFollow, kRefuse };
// Who may have written a file that is read. kUserOrRoot: the open file (fstat, so the file
// checked is the file read) must be owned by the effective uid or root and have neither the
// group- nor the other-write bit, else Reason::kUnsafePermissions, OpenSSH's StrictModes rule
// (the keystore's files). kUserOrRootAndGroup: the same, but the group-write bit is tolerated
// (key files by path: tpm2-tools writes them 0660).
enum class Writers { kAnyone, kUserOrRoot, kUserOrRootAndGroup };

// Reads a regular file of at most `max` bytes. FIFOs, devices, sockets and directories are
// refused without a blocking open; with Symlinks::kRefuse a symbolic link is refused too.
// Errors name the path; a missing file is Reason::kKeyNotFound.
Result<std::string> read_small_file(const std::string& path, size_t max, Symlinks symlinks,
                                    Writers writers = Writers::kAnyone);

// A password file (`--password-file`, `--passphrase-file`, a URI's `pin-source=`), checked as
// OpenSSH checks a private key file: a regular file must be owned by the effective uid or root and
// have no group or other permission bits at all (mode 0600 or 0400), else
// Reason::kUnsafePermissions naming the path, what is wrong and the fix. Pipes and terminals
// (`/dev/stdin`, `<(...)`) are the user's own and are not checked. read_secret_file checks the
// open file (fstat) and returns its first line (up to 255 bytes, without the `\n` or `\r\n`).
Result<SecretBytes> read_secret_file(const std::string& path);

// The directory rule for the keystore: `dir` and every directory above it (after symbolic links
// are resolved) up to the effective user's home directory, or up to / when `dir` is not under
// it, must be owned by the effective uid or root. `dir` itself must have neither the group- nor
// the other-write bit; a directory above it may have them only together with the sticky bit (as
// /tmp has): there nobody but its owner, root and the owner of an entry can rename or remove
// that entry, and the entry below it is owned by the user or root. Otherwise
// Reason::kUnsafePermissions, naming the directory, what is wrong and the fix; a missing `dir`
// is Reason::kKeyNotFound. `role` names `dir` in the message ("the keystore directory").
Status check_private_dir(const std::string& dir, const std::string& role);

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
