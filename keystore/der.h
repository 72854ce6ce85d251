// A minimal DER reader and writer: just what the TSS2 key file needs.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "keystore/ossl.h"

namespace tpmkey::der {

inline constexpr uint8_t kBoolean = 0x01, kInteger = 0x02, kOctetString = 0x04, kOid = 0x06,
                         kUtf8String = 0x0C, kSequence = 0x30;
inline constexpr uint8_t context_tag(int n) { return uint8_t(0xA0 | n); }  // [n] EXPLICIT

struct Tlv {
  uint8_t tag = 0;
  const uint8_t* value = nullptr;
  size_t length = 0;
};

// Reads consecutive TLVs from a buffer. Every failure leaves the reader failed.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  bool at_end() const { return p_ == end_; }
  // The next TLV if its tag is `tag` (consumed), else nullopt (not consumed, or failure).
  std::optional<Tlv> next_if(uint8_t tag);
  std::optional<Tlv> next();
  bool failed() const { return failed_; }

 private:
  std::optional<Tlv> peek(const uint8_t** after);
  const uint8_t* p_;
  const uint8_t* end_;
  bool failed_ = false;
};

// An INTEGER's value as an unsigned 32-bit number; nullopt when negative or too large.
std::optional<uint32_t> to_u32(const Tlv& t);

class Writer {
 public:
  void tlv(uint8_t tag, const uint8_t* p, size_t n);
  void tlv(uint8_t tag, const Bytes& b) { tlv(tag, b.data(), b.size()); }
  void u32(uint32_t v);
  void boolean(bool v);
  const Bytes& bytes() const { return out_; }

 private:
  Bytes out_;
};

}  // namespace tpmkey::der
