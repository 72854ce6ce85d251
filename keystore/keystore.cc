#include "keystore/keystore.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <openssl/rand.h>

#include "keystore/uri.h"

namespace tpmkey {
namespace {

constexpr size_t kMaxKeyFileSize = 64 * 1024;
constexpr std::string_view kSuffix = ".pem";

Error io_error(const std::string& what, int err) {
  return make_error(err == ENOENT ? Reason::kKeyNotFound : Reason::kIo, std::strerror(err)).context(what);
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

}  // namespace

Status write_file_exclusive(const std::string& path, const std::string& data) {
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
  TPMKEY_TRY(make_dirs(dir));
  if (access(path.c_str(), F_OK) == 0) return make_error(Reason::kInvalidArgument, "already exists").context(path);

  unsigned char rnd[8];
  RAND_bytes(rnd, sizeof rnd);
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, ".tmp-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
                rnd[4], rnd[5], rnd[6], rnd[7]);
  std::string tmp = dir + "/." + path.substr(slash + 1) + suffix;
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return io_error("create(" + tmp + ")", errno);
  size_t off = 0;
  int err = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) { err = errno ? errno : EIO; break; }
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

Result<KeyFile> read_keyfile(const std::string& path) {
  const std::string what = "read(" + path + ")";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error(what, errno);
  struct stat st{};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return make_error(Reason::kMalformedKey, "not a regular file").context(what);
  }
  std::string buf;
  buf.resize(kMaxKeyFileSize + 1);
  size_t off = 0;
  for (;;) {
    ssize_t n = read(fd, buf.data() + off, buf.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return io_error(what, err);
    }
    if (n == 0 || off + size_t(n) == buf.size()) { off += size_t(n); break; }
    off += size_t(n);
  }
  close(fd);
  if (off > kMaxKeyFileSize) return make_error(Reason::kMalformedKey, "file is larger than 64 KiB").context(what);
  if (off == 0) return make_error(Reason::kMalformedKey, "file is empty").context(what);
  auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(buf.data()), off);
  if (!kf) return kf.take_error().context(what);
  return kf;
}

Result<std::vector<std::string>> Keystore::list() const {
  std::vector<std::string> names;
  DIR* d = opendir(dir_.c_str());
  if (!d) {
    if (errno == ENOENT) return names;
    return io_error("list(" + dir_ + ")", errno);
  }
  while (dirent* e = readdir(d)) {
    std::string_view f = e->d_name;
    if (f.size() <= kSuffix.size() || f.substr(f.size() - kSuffix.size()) != kSuffix) continue;
    std::string name(f.substr(0, f.size() - kSuffix.size()));
    if (validate_name(name)) names.push_back(std::move(name));
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

bool Keystore::exists(const std::string& name) const { return access(path_of(name).c_str(), F_OK) == 0; }

Result<KeyFile> Keystore::read(const std::string& name) const {
  TPMKEY_TRY(validate_name(name));
  if (!exists(name))
    return make_error(Reason::kKeyNotFound, "no key named \"" + name + "\" in the keystore " + dir_);
  return read_keyfile(path_of(name));
}

Status Keystore::add(const std::string& name, const KeyFile& kf) const {
  TPMKEY_TRY(validate_name(name));
  if (exists(name))
    return make_error(Reason::kInvalidArgument, "a key named \"" + name + "\" already exists in " + dir_);
  return write_file_exclusive(path_of(name), keyfile_pem(kf));
}

Status Keystore::remove(const std::string& name) const {
  TPMKEY_TRY(validate_name(name));
  if (unlink(path_of(name).c_str()) != 0) {
    if (errno == ENOENT)
      return make_error(Reason::kKeyNotFound, "no key named \"" + name + "\" in the keystore " + dir_);
    return io_error("delete(" + path_of(name) + ")", errno);
  }
  return fsync_dir(dir_);
}

}  // namespace tpmkey
