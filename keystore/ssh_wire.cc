#include "keystore/ssh_wire.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

namespace tpmkey {

void SshWriter::u32(uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out_.push_back(uint8_t(v >> shift));
}

void SshWriter::string(const uint8_t* p, size_t n) {
  u32(uint32_t(n));
  raw(p, n);
}

void SshWriter::mpint(const uint8_t* p, size_t n) {
  while (n && *p == 0) { ++p; --n; }
  const bool pad = n && (p[0] & 0x80);
  u32(uint32_t(n + pad));
  if (pad) out_.push_back(0);
  raw(p, n);
}

bool SshReader::u8(uint8_t* v) {
  if (n_ < 1) return false;
  *v = *p_++;
  --n_;
  return true;
}

bool SshReader::u32(uint32_t* v) {
  if (n_ < 4) return false;
  *v = uint32_t(p_[0]) << 24 | uint32_t(p_[1]) << 16 | uint32_t(p_[2]) << 8 | p_[3];
  p_ += 4;
  n_ -= 4;
  return true;
}

bool SshReader::boolean(bool* v) {
  uint8_t b = 0;
  if (!u8(&b)) return false;
  *v = b != 0;
  return true;
}

bool SshReader::string(SshView* v) {
  uint32_t len = 0;
  if (n_ < 4) return false;
  SshReader peek = *this;
  peek.u32(&len);
  if (len > peek.n_) return false;
  v->data = peek.p_;
  v->size = len;
  p_ = peek.p_ + len;
  n_ = peek.n_ - len;
  return true;
}

bool SshReader::mpint(SshView* v) {
  if (!string(v)) return false;
  if (v->size && (v->data[0] & 0x80)) return false;  // negative
  while (v->size && v->data[0] == 0) { ++v->data; --v->size; }
  return true;
}

std::string base64(const uint8_t* p, size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  int len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), p, int(n));
  out.resize(size_t(len < 0 ? 0 : len));
  return out;
}

std::string ssh_fingerprint(const Bytes& blob) {
  uint8_t md[SHA256_DIGEST_LENGTH];
  SHA256(blob.data(), blob.size(), md);
  std::string b64 = base64(md, sizeof md);
  while (!b64.empty() && b64.back() == '=') b64.pop_back();
  return "SHA256:" + b64;
}

}  // namespace tpmkey
