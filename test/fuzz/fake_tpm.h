// What the fuzz targets that play a malicious TPM in the process share (tpm_response_fuzz.cc,
// tpm_fuzz.cc): the reader of the fuzz input, big-endian writing, the search the cleartext oracle
// runs over every command, a Link that hands back the response its transmit() prepared, and the
// set-up of a target's first input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "keystore/crypto.h"
#include "keystore/tpm/transport.h"
#include "test/fuzz/fuzz_support.h"

namespace tpmkey::fuzz {

// The fuzz input, read front to back.
struct Input {
  const uint8_t* p = nullptr;
  size_t left = 0;
  bool take(void* out, size_t n) {
    if (left < n) return false;
    if (n) std::memcpy(out, p, n);
    p += n;
    left -= n;
    return true;
  }
  bool u8(uint8_t* v) { return take(v, 1); }
  bool u16(uint16_t* v) {
    uint8_t b[2];
    if (!take(b, 2)) return false;
    *v = uint16_t(b[0] << 8 | b[1]);
    return true;
  }
  bool u32(uint32_t* v) {
    uint8_t b[4];
    if (!take(b, 4)) return false;
    *v = uint32_t(b[0]) << 24 | uint32_t(b[1]) << 16 | uint32_t(b[2]) << 8 | b[3];
    return true;
  }
};

inline uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
inline uint16_t be16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
inline void put16(Bytes& b, uint16_t v) { b.insert(b.end(), {uint8_t(v >> 8), uint8_t(v)}); }
inline void put32(Bytes& b, uint32_t v) {
  b.insert(b.end(), {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)});
}

// Whether `needle` (m > 0 bytes) occurs in `hay`.
inline bool contains(const uint8_t* hay, size_t n, const uint8_t* needle, size_t m) {
  if (m == 0 || n < m) return false;
  for (size_t i = 0; i + m <= n; ++i)
    if (std::memcmp(hay + i, needle, m) == 0) return true;
  return false;
}

// A TPM whose transmit() leaves its answer in response_ (empty: unreachable).
class FakeTpmLink : public Link {
 public:
  TSS2_RC receive(size_t* size, uint8_t* rsp, Deadline) override {
    if (response_.empty()) return TSS2_TCTI_RC_IO_ERROR;
    if (!rsp) {
      *size = response_.size();
      return TSS2_RC_SUCCESS;
    }
    if (*size < response_.size()) return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
    std::memcpy(rsp, response_.data(), response_.size());
    *size = response_.size();
    response_.clear();
    return TSS2_RC_SUCCESS;
  }
  bool continuous() const override { return true; }
  void forget_in_child() override {}

 protected:
  Bytes response_;
};

// Once per process, at a target's first input: registers the in-process link `name` (a new
// LinkType for each connection to "inprocess:NAME") and makes the target's Crypto.
template <typename LinkType>
const Crypto& crypto_with_link(const char* name) {
  static const std::unique_ptr<Crypto> crypto = [name] {
    register_inprocess_link(name, [] { return std::unique_ptr<Link>(new LinkType); });
    auto c = Crypto::create();
    if (!c) broken("no OpenSSL");
    return std::move(*c);
  }();
  return *crypto;
}

}  // namespace tpmkey::fuzz
