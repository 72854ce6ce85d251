// The keystore: a directory of TSS2 PRIVATE KEY PEM files, one per key, named NAME.pem.
#pragma once

#include <string>
#include <vector>

#include "keystore/error.h"
#include "keystore/keyfile.h"

namespace tpmkey {

class Keystore {
 public:
  explicit Keystore(std::string dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_; }
  std::string path_of(const std::string& name) const { return dir_ + "/" + name + ".pem"; }

  // Key names, sorted. A keystore directory that does not exist yet is empty.
  Result<std::vector<std::string>> list() const;
  Result<KeyFile> read(const std::string& name) const;
  bool exists(const std::string& name) const;
  // Creates NAME.pem (0600) atomically; refuses to replace an existing key.
  Status add(const std::string& name, const KeyFile& kf) const;
  Status remove(const std::string& name) const;

 private:
  std::string dir_;
};

// Reads a key file from any path (PEM or DER), with errors that name the path.
Result<KeyFile> read_keyfile(const std::string& path);
// Writes `data` to `path` atomically with mode 0600: a temporary file in the same directory,
// fsync, then link() into place (so an existing file is never replaced) and fsync the directory.
Status write_file_exclusive(const std::string& path, const std::string& data);

}  // namespace tpmkey
