// The SSH wire encoding (RFC 4251 section 5): uint32, string and mpint, as OpenSSH public keys,
// signatures and the ssh-agent protocol (docs/ssh.md) are made of. The reader never reads past
// its buffer: every read says whether the bytes were there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "keystore/ossl.h"

namespace tpmkey {

class SshWriter {
 public:
  void u8(uint8_t v) { out_.push_back(v); }
  void u32(uint32_t v);
  void raw(const uint8_t* p, size_t n) { out_.insert(out_.end(), p, p + n); }
  void string(const uint8_t* p, size_t n);
  void string(std::string_view s) { string(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }
  void string(const Bytes& b) { string(b.data(), b.size()); }
  // An mpint from an unsigned big-endian number (leading zeros dropped, a zero byte added when
  // the top bit is set).
  void mpint(const uint8_t* p, size_t n);
  const Bytes& bytes() const { return out_; }
  Bytes take() { return std::move(out_); }

 private:
  Bytes out_;
};

// A byte range inside the reader's buffer.
struct SshView {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::string_view text() const { return {reinterpret_cast<const char*>(data), size}; }
  Bytes bytes() const { return Bytes(data, data + size); }
};

class SshReader {
 public:
  SshReader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  explicit SshReader(SshView v) : SshReader(v.data, v.size) {}
  bool u8(uint8_t* v);
  bool u32(uint32_t* v);
  bool boolean(bool* v);
  bool string(SshView* v);
  // A non-negative mpint as its unsigned big-endian magnitude (no leading zero bytes).
  bool mpint(SshView* v);
  size_t left() const { return n_; }
  bool done() const { return n_ == 0; }

 private:
  const uint8_t* p_;
  size_t n_;
};

// Standard base64 (with padding), as authorized_keys lines carry key blobs.
std::string base64(const uint8_t* p, size_t n);
// OpenSSH's fingerprint of a public key blob: "SHA256:" and unpadded base64 of its SHA-256.
std::string ssh_fingerprint(const Bytes& blob);

}  // namespace tpmkey
