#include "keystore/keystore.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
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
  auto kf = read_keyfile(path_of(name));
  if (!kf) return kf;
  std::string handle;
  if (int fd = open(handle_path_of(name).c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
    char buf[32] = {};
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    close(fd);
    unsigned long h = 0;
    if (n <= 0 || std::sscanf(buf, "0x%lx", &h) != 1 || (h >> 24) != 0x81)
      return make_error(Reason::kMalformedKey, "bad persistent handle").context(handle_path_of(name));
    kf->persistent = uint32_t(h);
  }
  return kf;
}

Status Keystore::add(const std::string& name, const KeyFile& kf) const {
  TPMKEY_TRY(validate_name(name));
  if (exists(name))
    return make_error(Reason::kInvalidArgument, "a key named \"" + name + "\" already exists in " + dir_);
  unlink(handle_path_of(name).c_str());  // a leftover of an interrupted add, without its key
  if (kf.persistent) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%08x\n", kf.persistent);
    TPMKEY_TRY(write_file_exclusive(handle_path_of(name), buf));
  }
  return write_file_exclusive(path_of(name), keyfile_pem(kf));
}

Status Keystore::remove(const std::string& name) const {
  TPMKEY_TRY(validate_name(name));
  unlink(handle_path_of(name).c_str());
  if (unlink(path_of(name).c_str()) != 0) {
    if (errno == ENOENT)
      return make_error(Reason::kKeyNotFound, "no key named \"" + name + "\" in the keystore " + dir_);
    return io_error("delete(" + path_of(name) + ")", errno);
  }
  return fsync_dir(dir_);
}

std::string to_hex(const Bytes& b) {
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  for (uint8_t c : b) {
    s += kDigits[c >> 4];
    s += kDigits[c & 15];
  }
  return s;
}

namespace {

std::optional<Bytes> from_hex(std::string_view s) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (s.empty() || s.size() % 2) return std::nullopt;
  Bytes b;
  for (size_t i = 0; i < s.size(); i += 2) {
    int hi = nibble(s[i]), lo = nibble(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    b.push_back(uint8_t(hi << 4 | lo));
  }
  return b;
}

}  // namespace

Result<std::optional<SrkPin>> Keystore::read_pin() const {
  const std::string path = pin_path(), what = "read SRK pin(" + path + ")";
  std::string text;
  {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return std::optional<SrkPin>();
      return io_error(what, errno);
    }
    char buf[1024];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0 && text.size() < 4096) text.append(buf, size_t(n));
    close(fd);
  }
  SrkPin pin;
  bool have_handle = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.empty() || line[0] == '#') continue;
    if (line.substr(0, 5) == "name ") {
      auto b = from_hex(line.substr(5));
      if (!b || b->size() < 4) return make_error(Reason::kMalformedKey, "bad name line").context(what);
      pin.name = std::move(*b);
    } else if (line == "handle none") {
      have_handle = true;
    } else if (line.substr(0, 9) == "handle 0x" && line.size() == 17) {
      auto b = from_hex(line.substr(9));
      if (!b) return make_error(Reason::kMalformedKey, "bad handle line").context(what);
      pin.handle = uint32_t((*b)[0]) << 24 | uint32_t((*b)[1]) << 16 | uint32_t((*b)[2]) << 8 | (*b)[3];
      have_handle = (pin.handle >> 24) == 0x81;
      if (!have_handle) return make_error(Reason::kMalformedKey, "handle is not persistent").context(what);
    } else {
      return make_error(Reason::kMalformedKey, "unexpected line \"" + std::string(line.substr(0, 40)) + "\"").context(what);
    }
  }
  if (pin.name.empty() || !have_handle) return make_error(Reason::kMalformedKey, "missing name or handle line").context(what);
  return std::optional<SrkPin>(std::move(pin));
}

Status Keystore::write_pin(const SrkPin& pin, bool replace) const {
  char handle[16] = "none";
  if (pin.handle) std::snprintf(handle, sizeof handle, "0x%08x", pin.handle);
  const std::string text =
      "# tpmkey: the storage root key (SRK) of this keystore's TPM. Sessions are salted only to a key\n"
      "# with this name; a different name is refused. Written by `tpmkey init` or on first use.\n"
      "name " + to_hex(pin.name) + "\nhandle " + handle + "\n";
  const std::string path = pin_path();
  if (!replace) return write_file_exclusive(path, text);
  const std::string tmp = path + ".new";
  unlink(tmp.c_str());
  TPMKEY_TRY(write_file_exclusive(tmp, text));
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return io_error("rename(" + tmp + ")", err);
  }
  return fsync_dir(dir_);
}

}  // namespace tpmkey
