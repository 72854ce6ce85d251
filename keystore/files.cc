#include "keystore/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <openssl/rand.h>

namespace tpmkey {
namespace {

constexpr const char* kTmpMarker = ".tmp-";
constexpr size_t kTmpHex = 16;

// A missing file, or a path through something that is not a directory: it does not exist.
Error io_error(const std::string& what, int err) {
  return make_error(err == ENOENT || err == ENOTDIR ? Reason::kKeyNotFound : Reason::kIo, std::strerror(err))
      .context(what);
}

const char* kind_of(mode_t m) {
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m) || S_ISBLK(m)) return "a device";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISDIR(m)) return "a directory";
  if (S_ISLNK(m)) return "a symbolic link";
  return "not a regular file";
}

Error not_regular(const std::string& what, mode_t m) {
  return make_error(Reason::kMalformedKey, std::string("not a regular file (it is ") + kind_of(m) + ")").context(what);
}

// The owners whose files and directories are trusted: the user, and root, who can change
// anything anyway.
bool trusted_owner(uid_t uid) { return uid == geteuid() || uid == 0; }

std::string euid_text() { return std::to_string(geteuid()); }

std::string mode_text(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", unsigned(m & 07777));
  return buf;
}

std::string writable_by(mode_t m) {
  const bool group = m & S_IWGRP, other = m & S_IWOTH;
  return std::string("writable by ") + (group && other ? "its group and others" : group ? "its group" : "others");
}

Error unsafe(std::string detail) { return make_error(Reason::kUnsafePermissions, std::move(detail)); }

// The file rule, on the open file's fstat.
Status check_writers(const std::string& path, const struct stat& st, Writers writers) {
  if (!trusted_owner(st.st_uid))
    return unsafe(path + " is owned by uid " + std::to_string(st.st_uid) + ", not by you (uid " + euid_text() +
                  ") or root, so another user could have written it: check it, then remove it or (as root) `chown " +
                  euid_text() + " " + path + "`");
  const mode_t forbidden = writers == Writers::kUserOrRootAndGroup ? S_IWOTH : S_IWGRP | S_IWOTH;
  if (st.st_mode & forbidden)
    return unsafe(path + " is " + writable_by(st.st_mode & forbidden) + " (mode " + mode_text(st.st_mode) +
                  "), so another user could have written it: check it, then `chmod " +
                  (forbidden & S_IWGRP ? "go-w " : "o-w ") + path + "`");
  return Status::Ok();
}

// The password-file rule, on a stat of the file.
Status check_secret_mode(const std::string& path, const struct stat& st) {
  if (!S_ISREG(st.st_mode)) return Status::Ok();  // a pipe or a terminal: the user's own
  if (!trusted_owner(st.st_uid))
    return unsafe(path + " is owned by uid " + std::to_string(st.st_uid) + ", not by you (uid " + euid_text() +
                  ") or root, so another user chose or can read this password: use a file of your own, mode 0600");
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    const bool group = st.st_mode & S_IRWXG, other = st.st_mode & S_IRWXO;
    return unsafe(path + " is accessible by " + (group && other ? "its group and others" : group ? "its group" : "others") +
                  " (mode " + mode_text(st.st_mode) + "), and a password file must be private: `chmod 600 " + path + "`");
  }
  return Status::Ok();
}

// The effective user's home directory, symbolic links resolved (from the password database, as
// OpenSSH takes it, not from $HOME); empty if unknown.
std::string real_home() {
  passwd pw{};
  passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (getpwuid_r(geteuid(), &pw, buf.data(), buf.size(), &found) != 0 || !found || !pw.pw_dir) return "";
  char* real = realpath(pw.pw_dir, nullptr);
  if (!real) return "";
  std::string home = real;
  std::free(real);
  return home;
}

}  // namespace

// OpenSSH's safe_path (misc.c) is the model: the canonical path, each directory owned by the
// user or root and not group- or other-writable, walking up to the home directory or /. One
// difference: a directory above the checked one may be writable by others when its sticky bit
// is set, so that a private directory under /tmp (mkdtemp, tests, the demo) is accepted. Such a
// directory's owner is checked like any other, and the entry below it has passed the owner
// check, so no other user can rename it away and put another in its place.
Status check_private_dir(const std::string& dir, const std::string& role) {
  const std::string what = "check(" + dir + ")";
  char* real = realpath(dir.c_str(), nullptr);
  if (!real) return io_error(what, errno);
  std::string path = real;
  std::free(real);
  const std::string top = path;
  for (;;) {
    struct stat st{};
    if (stat(path.c_str(), &st) != 0) return io_error(what, errno);
    const bool first = path == top;
    if (first && !S_ISDIR(st.st_mode)) return make_error(Reason::kIo, "not a directory").context(what);
    const std::string subject = first ? role + " " + top : path + ", a directory above " + role + " " + top + ",";
    Status problem = Status::Ok();
    if (!trusted_owner(st.st_uid))
      problem = unsafe(subject + " is owned by uid " + std::to_string(st.st_uid) + ", not by you (uid " +
                       euid_text() + ") or root, so that user could put other files in its place: use a directory "
                       "of your own, or (as root) `chown " + euid_text() + " " + path + "`");
    else if ((st.st_mode & (S_IWGRP | S_IWOTH)) && (first || !(st.st_mode & S_ISVTX)))
      problem = unsafe(subject + " is " + writable_by(st.st_mode) + " (mode " + mode_text(st.st_mode) + ")" +
                       (first ? ", so another user could put files in it" :
                                " and not sticky, so another user could put another directory in place of what is "
                                "in it") +
                       ": `chmod go-w " + path + "`");
    if (!problem) {
      // The walk ends at the home directory: what is above it is not the user's to fix. The
      // home directory is looked up only here, when a directory fails: most walks reach / clean.
      const std::string home = real_home();
      const bool top_in_home = !home.empty() && (top == home || top.rfind(home + "/", 0) == 0);
      const bool above_home = path != home && (path == "/" || home.rfind(path + "/", 0) == 0);
      return top_in_home && above_home ? Status::Ok() : problem;
    }
    if (path == "/") return Status::Ok();
    const size_t slash = path.find_last_of('/');
    path = slash == 0 ? "/" : path.substr(0, slash);
  }
}

Result<std::string> read_small_file(const std::string& path, size_t max, Symlinks symlinks, Writers writers) {
  const std::string what = "read(" + path + ")";
  struct stat st{};
  // Look before opening: opening a FIFO blocks until a writer comes, a device may act on open.
  const int rc = symlinks == Symlinks::kRefuse ? lstat(path.c_str(), &st) : stat(path.c_str(), &st);
  if (rc != 0) return io_error(what, errno);
  if (!S_ISREG(st.st_mode)) return not_regular(what, st.st_mode);
  // O_NONBLOCK: should the path be swapped for a FIFO after the check, open still returns.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY |
                                  (symlinks == Symlinks::kRefuse ? O_NOFOLLOW : 0));
  if (fd < 0) return io_error(what, errno);
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return not_regular(what, st.st_mode);
  }
  if (writers != Writers::kAnyone) {
    if (Status ok = check_writers(path, st, writers); !ok) {
      close(fd);
      return ok.take_error().context(what);
    }
  }
  std::string buf;
  buf.resize(max + 1);
  size_t off = 0;
  for (;;) {
    ssize_t n = read(fd, buf.data() + off, buf.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return io_error(what, err);
    }
    off += size_t(n);
    if (n == 0 || off == buf.size()) break;
  }
  close(fd);
  if (off > max) return make_error(Reason::kMalformedKey, "file is larger than " + std::to_string(max / 1024) + " KiB").context(what);
  buf.resize(off);
  return buf;
}

Result<SecretBytes> read_secret_file(const std::string& path) {
  const std::string what = "read(" + path + ")";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return make_error(Reason::kIo, std::strerror(errno)).context(what);  // not a missing key
  struct stat st{};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return io_error(what, err);
  }
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    return make_error(Reason::kIo, "is a directory, not a password file").context(what);
  }
  if (Status ok = check_secret_mode(path, st); !ok) {
    close(fd);
    return ok.take_error().context(what);
  }
  uint8_t buf[256];
  size_t off = 0;
  int err = 0;
  while (off < sizeof buf) {  // until the first line ends, the file ends or the buffer is full
    ssize_t n = read(fd, buf + off, sizeof buf - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) err = errno;
    if (n <= 0) break;
    const bool line_end = std::memchr(buf + off, '\n', size_t(n)) != nullptr;
    off += size_t(n);
    if (line_end) break;
  }
  close(fd);
  if (err) {
    OPENSSL_cleanse(buf, sizeof buf);
    return io_error(what, err);
  }
  size_t len = 0;
  while (len < off && buf[len] != '\n' && buf[len] != '\r') ++len;
  if (len == sizeof buf) {
    OPENSSL_cleanse(buf, sizeof buf);
    return make_error(Reason::kInvalidArgument, "the first line is longer than 255 bytes").context(what);
  }
  SecretBytes secret(buf, len);
  OPENSSL_cleanse(buf, sizeof buf);
  return secret;
}

Status make_dirs(const std::string& dir) {
  if (dir.empty()) return Status::Ok();
  struct stat st{};
  if (stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return make_error(Reason::kIo, "not a directory").context("keystore(" + dir + ")");
    return Status::Ok();
  }
  size_t slash = dir.find_last_of('/');
  if (slash != std::string::npos && slash > 0) TPMKEY_TRY(make_dirs(dir.substr(0, slash)));
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return io_error("mkdir(" + dir + ")", errno);
  return Status::Ok();
}

Status fsync_dir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return io_error("open(" + dir + ")", errno);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) return io_error("fsync(" + dir + ")", err);
  return Status::Ok();
}

bool is_temporary_name(const std::string& f) {
  const size_t marker = std::strlen(kTmpMarker);
  if (f.size() < 2 + marker + kTmpHex || f[0] != '.') return false;
  const size_t at = f.size() - kTmpHex - marker;
  if (f.compare(at, marker, kTmpMarker) != 0) return false;
  for (size_t i = f.size() - kTmpHex; i < f.size(); ++i)
    if (!std::isxdigit(static_cast<unsigned char>(f[i]))) return false;
  return true;
}

void remove_orphaned_temporaries(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  const time_t now = time(nullptr);
  const auto age = std::chrono::duration_cast<std::chrono::seconds>(kOrphanAge).count();
  while (dirent* e = readdir(d)) {
    const std::string f = e->d_name;
    if (!is_temporary_name(f)) continue;
    struct stat st{};
    if (fstatat(dirfd(d), f.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || now - st.st_mtime < age) continue;
    unlinkat(dirfd(d), f.c_str(), 0);
  }
  closedir(d);
}

Status write_file_exclusive(const std::string& path, const std::string& data) {
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
  TPMKEY_TRY(make_dirs(dir));
  if (access(path.c_str(), F_OK) == 0) return make_error(Reason::kInvalidArgument, "already exists").context(path);
  remove_orphaned_temporaries(dir);

  unsigned char rnd[kTmpHex / 2];
  if (RAND_bytes(rnd, sizeof rnd) != 1) return make_error(Reason::kInternal, "the random generator failed");
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, "%s%02x%02x%02x%02x%02x%02x%02x%02x", kTmpMarker, rnd[0], rnd[1], rnd[2], rnd[3],
                rnd[4], rnd[5], rnd[6], rnd[7]);
  std::string tmp = dir + "/." + path.substr(slash + 1) + suffix;
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return io_error("create(" + tmp + ")", errno);
  size_t off = 0;
  int err = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = errno ? errno : EIO;
      break;
    }
    off += size_t(n);
  }
  if (!err && fsync(fd) != 0) err = errno;
  close(fd);
  if (!err && link(tmp.c_str(), path.c_str()) != 0) err = errno;
  unlink(tmp.c_str());
  if (err == EEXIST) return make_error(Reason::kInvalidArgument, "already exists").context(path);
  if (err) return io_error("write(" + path + ")", err);
  return fsync_dir(dir);
}

}  // namespace tpmkey
