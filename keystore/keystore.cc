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

#include "keystore/files.h"
#include "keystore/uri.h"

namespace tpmkey {
namespace {

constexpr std::string_view kSuffix = ".pem";

Error io_error(const std::string& what, int err) {
  return make_error(err == ENOENT ? Reason::kKeyNotFound : Reason::kIo, std::strerror(err)).context(what);
}

}  // namespace

Result<KeyFile> read_keyfile(const std::string& path, Symlinks symlinks, Writers writers) {
  auto data = read_small_file(path, kMaxKeyFileSize, symlinks, writers);
  if (!data) return data.take_error();
  if (data->empty()) return make_error(Reason::kMalformedKey, "file is empty").context("read(" + path + ")");
  auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(data->data()), data->size());
  if (!kf) return kf.take_error().context("read(" + path + ")");
  return kf;
}

Status Keystore::check_dir() const { return check_private_dir(dir_, "the keystore directory"); }

Result<std::vector<std::string>> Keystore::list() const {
  std::vector<std::string> names;
  if (Status safe = check_dir(); !safe) {
    if (safe.error().reason == Reason::kKeyNotFound) return names;  // not made yet
    return safe.take_error().context("list(" + dir_ + ")");
  }
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

// Any directory entry counts, a dangling symbolic link too: read() then says what it is, and
// add() never writes where one is.
bool Keystore::exists(const std::string& name) const {
  struct stat st{};
  return lstat(path_of(name).c_str(), &st) == 0;
}

Result<KeyFile> Keystore::read(const std::string& name) const {
  TPMKEY_TRY(validate_name(name));
  // A missing directory falls through to "no key named".
  if (Status safe = check_dir(); !safe && safe.error().reason != Reason::kKeyNotFound) return safe.take_error();
  if (!exists(name))
    return make_error(Reason::kKeyNotFound, "no key named \"" + name + "\" in the keystore " + dir_);
  auto kf = read_keyfile(path_of(name), Symlinks::kRefuse, Writers::kUserOrRoot);
  if (!kf) return kf;
  auto handle = read_small_file(handle_path_of(name), 32, Symlinks::kRefuse, Writers::kUserOrRoot);
  if (handle) {
    unsigned long h = 0;
    if (handle->empty() || std::sscanf(handle->c_str(), "0x%lx", &h) != 1 || (h >> 24) != 0x81)
      return make_error(Reason::kMalformedKey, "bad persistent handle").context(handle_path_of(name));
    kf->persistent = uint32_t(h);
  } else if (handle.error().reason != Reason::kKeyNotFound) {
    return handle.take_error();
  }
  return kf;
}

Status Keystore::add(const std::string& name, const KeyFile& kf) const {
  TPMKEY_TRY(validate_name(name));
  TPMKEY_TRY(make_dirs(dir_));
  if (Status safe = check_dir(); !safe) return safe.take_error().context("add(tpm2:" + name + ")");
  if (exists(name))
    return make_error(Reason::kInvalidArgument, "a key named \"" + name + "\" already exists in " + dir_);
  const std::string pem = keyfile_pem(kf);
  if (pem.empty()) return keyfile_unwritable().context("add(tpm2:" + name + ")");
  if (pem.size() > kMaxKeyFileSize)
    return make_error(Reason::kInvalidArgument,
                      "the key file would be " + std::to_string(pem.size()) + " bytes, more than the " +
                          std::to_string(kMaxKeyFileSize / 1024) + " KiB a key file may have (its description is " +
                          std::to_string(kf.description.size()) + " bytes)")
        .context("add(tpm2:" + name + ")");
  unlink(handle_path_of(name).c_str());  // a leftover of an interrupted add, without its key
  if (kf.persistent) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%08x\n", kf.persistent);
    TPMKEY_TRY(write_file_exclusive(handle_path_of(name), buf));
  }
  return write_file_exclusive(path_of(name), pem);
}

Status Keystore::replace(const std::string& name, const KeyFile& kf) const {
  TPMKEY_TRY(validate_name(name));
  const std::string what = "replace(tpm2:" + name + ")";
  if (Status safe = check_dir(); !safe) return safe.take_error().context(what);
  if (!exists(name))
    return make_error(Reason::kKeyNotFound, "no key named \"" + name + "\" in the keystore " + dir_).context(what);
  if (kf.persistent || access(handle_path_of(name).c_str(), F_OK) == 0)
    return make_error(Reason::kUnsupported, "the key is persistent (" + handle_path_of(name) + ")").context(what);
  const std::string pem = keyfile_pem(kf);
  if (pem.empty()) return keyfile_unwritable().context(what);
  if (pem.size() > kMaxKeyFileSize)
    return make_error(Reason::kInvalidArgument, "the key file would be larger than " +
                                                    std::to_string(kMaxKeyFileSize / 1024) + " KiB")
        .context(what);
  // A temporary name that files.h recognizes, so that an orphan of a killed writer is removed.
  unsigned char rnd[8];
  if (RAND_bytes(rnd, sizeof rnd) != 1) return make_error(Reason::kInternal, "the random generator failed").context(what);
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, ".tmp-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4],
                rnd[5], rnd[6], rnd[7]);
  const std::string tmp = dir_ + "/." + name + std::string(kSuffix) + suffix;
  TPMKEY_TRY(write_file_exclusive(tmp, pem));  // 0600, fsynced
  if (rename(tmp.c_str(), path_of(name).c_str()) != 0) {
    const int err = errno;
    unlink(tmp.c_str());
    return io_error("rename(" + tmp + ")", err);
  }
  return fsync_dir(dir_);
}

Status Keystore::remove(const std::string& name) const {
  TPMKEY_TRY(validate_name(name));
  if (Status safe = check_dir(); !safe) {
    if (safe.error().reason == Reason::kKeyNotFound)
      return make_error(Reason::kKeyNotFound, "no key named \"" + name + "\" in the keystore " + dir_);
    return safe.take_error().context("delete(tpm2:" + name + ")");
  }
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
  if (Status safe = check_dir(); !safe) {
    if (safe.error().reason == Reason::kKeyNotFound) return std::optional<SrkPin>();  // no keystore yet
    return safe.take_error().context("read SRK pin");
  }
  auto read = read_small_file(path, 4096, Symlinks::kRefuse, Writers::kUserOrRoot);
  if (!read) {
    if (read.error().reason == Reason::kKeyNotFound) {
      struct stat st{};
      if (lstat(path.c_str(), &st) != 0) return std::optional<SrkPin>();  // none yet
    }
    return read.take_error().context("read SRK pin");
  }
  const std::string& text = *read;
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
      // Not repeated: whatever the file holds is no business of a message.
      return make_error(Reason::kMalformedKey, "a line is neither \"name ...\" nor \"handle ...\"").context(what);
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
  TPMKEY_TRY(make_dirs(dir_));
  if (Status safe = check_dir(); !safe) return safe.take_error().context("write SRK pin");
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

std::string Keystore::parent_auth_path(uint32_t handle) const {
  char name[40];
  std::snprintf(name, sizeof name, "/parent-0x%08x.auth", handle);
  return dir_ + name;
}

bool Keystore::parent_needs_auth(uint32_t handle) const {
  if (!check_dir()) return false;
  return read_small_file(parent_auth_path(handle), 4096, Symlinks::kRefuse, Writers::kUserOrRoot).ok();
}

Status Keystore::record_parent_needs_auth(uint32_t handle) const {
  if (parent_needs_auth(handle)) return Status::Ok();
  TPMKEY_TRY(make_dirs(dir_));
  if (Status safe = check_dir(); !safe) return safe.take_error().context("record the parent's password");
  char text[160];
  std::snprintf(text, sizeof text,
                "# tpmkey: the persistent parent 0x%08x has a password; keys under it ask for it.\n", handle);
  Status st = write_file_exclusive(parent_auth_path(handle), text);
  if (!st && parent_needs_auth(handle)) return Status::Ok();  // another process wrote it meanwhile
  return st;
}

}  // namespace tpmkey
