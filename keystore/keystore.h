// The keystore: a directory of TSS2 PRIVATE KEY PEM files, one per key, named NAME.pem: listed,
// read, added (never overwriting), replaced atomically (a changed password), removed. Every one
// of these first checks the directory and the directories above it (check_private_dir, files.h),
// and the files read must be the user's or root's (Writers::kUserOrRoot): srk.pin decides which
// SRK sessions are salted to, so another user who could write it could read the passwords sent.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "keystore/error.h"
#include "keystore/files.h"
#include "keystore/keyfile.h"
#include "keystore/ossl.h"

namespace tpmkey {

// The storage root key (SRK) pin: the name of the key sessions are salted to, and the persistent
// handle it lives at (0: none, a transient primary is created per process). docs/sessions.md.
struct SrkPin {
  Bytes name;
  uint32_t handle = 0;
};

class Keystore {
 public:
  explicit Keystore(std::string dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_; }
  std::string path_of(const std::string& name) const { return dir_ + "/" + name + ".pem"; }
  // Where the persistent handle of a `tpmkey create --persistent` key is recorded.
  std::string handle_path_of(const std::string& name) const { return dir_ + "/" + name + ".handle"; }

  // Key names, sorted. A keystore directory that does not exist yet is empty.
  Result<std::vector<std::string>> list() const;
  Result<KeyFile> read(const std::string& name) const;
  // Whether NAME.pem is there at all (lstat: a dangling symbolic link exists).
  bool exists(const std::string& name) const;
  // Creates NAME.pem (0600) atomically, and NAME.handle when kf.persistent is set; refuses to
  // replace an existing key. read() fills kf.persistent from NAME.handle.
  Status add(const std::string& name, const KeyFile& kf) const;
  // Replaces an existing NAME.pem atomically (0600): the new file is written under a temporary
  // name (files.h) and renamed over the old one, so a reader sees the old or the new key file,
  // never a mix. A key with NAME.handle (persistent) is refused: its TPM copy would not change.
  Status replace(const std::string& name, const KeyFile& kf) const;
  Status remove(const std::string& name) const;

  // The SRK pin, kept in the keystore directory as srk.pin (text). nullopt if there is none yet.
  std::string pin_path() const { return dir_ + "/srk.pin"; }
  Result<std::optional<SrkPin>> read_pin() const;
  // Writes the pin atomically (0600); replaces an existing pin only if `replace`.
  Status write_pin(const SrkPin& pin, bool replace) const;

  // Persistent parents that have a password of their own (docs/keys.md#parents-with-a-password):
  // a key made under one with `-pkeyopt parent-auth:` records it, as the file
  // parent-0xHANDLE.auth, so that a key under it asks for that password when it loads rather than
  // trying none, which would cost a dictionary-attack failure. Only a record the keystore's rules
  // accept (the user's or root's, not writable by others) counts.
  std::string parent_auth_path(uint32_t handle) const;
  bool parent_needs_auth(uint32_t handle) const;
  Status record_parent_needs_auth(uint32_t handle) const;

 private:
  // check_private_dir for this keystore. Writers call it after creating the directory.
  Status check_dir() const;

  std::string dir_;
};

// Lower-case hex, as names are shown and pinned ("000b31ad...").
std::string to_hex(const Bytes& b);

// Reads a key file from any path (PEM or DER), with errors that name the path. Only regular
// files are read (files.h); keystore entries also refuse symbolic links. `writers`: who may
// have written the file (files.h).
Result<KeyFile> read_keyfile(const std::string& path, Symlinks symlinks = Symlinks::kFollow,
                             Writers writers = Writers::kAnyone);

}  // namespace tpmkey
