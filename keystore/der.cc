#include "keystore/der.h"

namespace tpmkey::der {

std::optional<Tlv> Reader::peek(const uint8_t** after) {
  if (failed_ || p_ == end_) return std::nullopt;
  const uint8_t* p = p_;
  Tlv t;
  t.tag = *p++;
  if ((t.tag & 0x1F) == 0x1F || p == end_) { failed_ = true; return std::nullopt; }  // no multi-byte tags
  size_t len = *p++;
  if (len & 0x80) {
    size_t nbytes = len & 0x7F;
    if (nbytes == 0 || nbytes > 4 || size_t(end_ - p) < nbytes) { failed_ = true; return std::nullopt; }
    len = 0;
    for (size_t i = 0; i < nbytes; ++i) len = len << 8 | *p++;
    if (len < 0x80) { failed_ = true; return std::nullopt; }  // not minimal: not DER
  }
  if (size_t(end_ - p) < len) { failed_ = true; return std::nullopt; }
  t.value = p;
  t.length = len;
  *after = p + len;
  return t;
}

std::optional<Tlv> Reader::next() {
  const uint8_t* after = nullptr;
  auto t = peek(&after);
  if (t) p_ = after;
  return t;
}

std::optional<Tlv> Reader::next_if(uint8_t tag) {
  const uint8_t* after = nullptr;
  auto t = peek(&after);
  if (!t || t->tag != tag) return std::nullopt;
  p_ = after;
  return t;
}

std::optional<uint32_t> to_u32(const Tlv& t) {
  if (t.tag != kInteger || t.length == 0 || (t.value[0] & 0x80)) return std::nullopt;
  size_t i = 0;
  if (t.value[0] == 0 && t.length > 1) i = 1;  // leading zero of a positive number
  if (t.length - i > 4) return std::nullopt;
  uint32_t v = 0;
  for (; i < t.length; ++i) v = v << 8 | t.value[i];
  return v;
}

void Writer::tlv(uint8_t tag, const uint8_t* p, size_t n) {
  out_.push_back(tag);
  if (n < 0x80) {
    out_.push_back(uint8_t(n));
  } else {
    uint8_t len[4];
    int k = 0;
    for (size_t v = n; v; v >>= 8) len[k++] = uint8_t(v);
    out_.push_back(uint8_t(0x80 | k));
    while (k) out_.push_back(len[--k]);
  }
  out_.insert(out_.end(), p, p + n);
}

void Writer::u32(uint32_t v) {
  uint8_t b[5];
  int n = 0;
  b[n++] = 0;
  for (int shift = 24; shift >= 0; shift -= 8) b[n++] = uint8_t(v >> shift);
  int start = 0;  // minimal encoding: drop redundant leading zero bytes
  while (start < 4 && b[start] == 0 && !(b[start + 1] & 0x80)) ++start;
  tlv(kInteger, b + start, size_t(n - start));
}

void Writer::boolean(bool v) {
  uint8_t b = v ? 0xFF : 0x00;
  tlv(kBoolean, &b, 1);
}

}  // namespace tpmkey::der
