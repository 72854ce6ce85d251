#include "keystore/uri.h"

#include <cstdio>
#include <cctype>
#include <cstring>
#include <strings.h>
#include <vector>

namespace tpmkey {
namespace {

constexpr std::string_view kScheme = "tpm2:";
constexpr uint32_t kPersistentFirst = 0x81000000u;
constexpr uint32_t kPersistentLast = 0x81FFFFFFu;

Error uri_error(std::string detail) { return make_error(Reason::kMalformedUri, std::move(detail)); }

bool is_unreserved(unsigned char c) {
  return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}
// Characters that may appear unencoded inside an attribute value.
bool is_plain_value_char(unsigned char c) {
  return is_unreserved(c) || c == '/' || c == ':' || c == '@' || c == '+' || c == ',';
}
int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX escapes into `out`. `what` names the attribute for messages (never the value).
Status pct_decode(std::string_view in, std::string_view what, SecretBytes& out) {
  std::vector<uint8_t> buf;
  buf.reserve(in.size());
  Status st;
  for (size_t i = 0; i < in.size(); ++i) {
    unsigned char c = in[i];
    if (c == '%') {
      int hi = i + 2 < in.size() ? hex_value(in[i + 1]) : -1;
      int lo = i + 2 < in.size() ? hex_value(in[i + 2]) : -1;
      if (i + 2 >= in.size() || hi < 0 || lo < 0) {
        st = uri_error("bad percent-encoding in attribute \"" + std::string(what) + "\"");
        break;
      }
      uint8_t b = uint8_t(hi << 4 | lo);
      if (b == 0) {
        st = uri_error("attribute \"" + std::string(what) + "\" contains a NUL byte");
        break;
      }
      buf.push_back(b);
      i += 2;
    } else if (is_plain_value_char(c)) {
      buf.push_back(c);
    } else {
      st = uri_error("character that must be percent-encoded in attribute \"" + std::string(what) + "\"");
      break;
    }
  }
  if (st) out = SecretBytes(buf.data(), buf.size());
  if (!buf.empty()) OPENSSL_cleanse(buf.data(), buf.size());
  return st;
}

Result<std::string> pct_decode_string(std::string_view in, std::string_view what) {
  SecretBytes b;
  TPMKEY_TRY(pct_decode(in, what, b));
  if (b.empty()) return uri_error("attribute \"" + std::string(what) + "\" is empty");
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

void pct_encode(const uint8_t* p, size_t n, std::string& out) {
  static const char* kHex = "0123456789ABCDEF";
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = p[i];
    if (is_unreserved(c) || c == '/') {
      out.push_back(char(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
}
void pct_encode(std::string_view s, std::string& out) {
  pct_encode(reinterpret_cast<const uint8_t*>(s.data()), s.size(), out);
}

Result<uint32_t> parse_handle(std::string_view v) {
  if (v.size() != 10 || v[0] != '0' || (v[1] != 'x' && v[1] != 'X'))
    return uri_error("handle must be 0x followed by 8 hex digits");
  uint32_t h = 0;
  for (size_t i = 2; i < v.size(); ++i) {
    int d = hex_value(v[i]);
    if (d < 0) return uri_error("handle must be 0x followed by 8 hex digits");
    h = h << 4 | uint32_t(d);
  }
  if (h < kPersistentFirst || h > kPersistentLast)
    return uri_error("handle is not a persistent handle (0x81000000-0x81ffffff)");
  return h;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return parts;
}

Status duplicate(std::string_view key) {
  return uri_error("attribute \"" + std::string(key) + "\" given more than once");
}

Status parse_path_attr(std::string_view attr, TpmUri& uri) {
  size_t eq = attr.find('=');
  if (eq == std::string_view::npos) return uri_error("attribute without a value: \"" + std::string(attr) + "\"");
  std::string_view key = attr.substr(0, eq), val = attr.substr(eq + 1);
  if (key == "name") {
    if (uri.name) return duplicate(key);
    TPMKEY_TRY(validate_name(val));
    uri.name = std::string(val);
  } else if (key == "handle") {
    if (uri.handle) return duplicate(key);
    auto h = parse_handle(val);
    if (!h) return h.take_error();
    uri.handle = *h;
  } else if (key == "file") {
    if (uri.file) return duplicate(key);
    auto f = pct_decode_string(val, key);
    if (!f) return f.take_error();
    uri.file = std::move(*f);
  } else if (key == "type") {
    if (uri.type) return duplicate(key);
    if (val == "private") uri.type = ObjectType::kPrivate;
    else if (val == "public") uri.type = ObjectType::kPublic;
    else return uri_error("type must be \"private\" or \"public\"");
  } else {
    return uri_error("unknown attribute \"" + std::string(key) + "\"");
  }
  return Status::Ok();
}

Status parse_query_attr(std::string_view attr, TpmUri& uri) {
  size_t eq = attr.find('=');
  // The query may hold a password: no part of it is ever repeated in a message.
  if (eq == std::string_view::npos)
    return uri_error("a query attribute has no value (the query takes pin-source=PATH or pin-value=PIN)");
  std::string_view key = attr.substr(0, eq), val = attr.substr(eq + 1);
  if (key == "pin-source") {
    if (uri.pin_source) return duplicate(key);
    auto f = pct_decode_string(val, key);
    if (!f) return f.take_error();
    uri.pin_source = std::move(*f);
  } else if (key == "pin-value") {
    if (uri.pin_value) return duplicate(key);
    SecretBytes pin;
    TPMKEY_TRY(pct_decode(val, key, pin));
    uri.pin_value = std::move(pin);
  } else {
    return uri_error("unknown query attribute (the query takes pin-source=PATH or pin-value=PIN)");
  }
  return Status::Ok();
}

}  // namespace

Status validate_name(std::string_view name) {
  if (name.empty()) return uri_error("key name is empty");
  if (name.size() > kMaxNameLength) return uri_error("key name is longer than 128 characters");
  if (name[0] == '.') return uri_error("key name \"" + std::string(name) + "\" starts with \".\"");
  for (unsigned char c : name) {
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.')) {
      std::string shown(name.substr(0, 64));
      for (char& s : shown)
        if (!std::isprint(static_cast<unsigned char>(s))) s = '?';
      return uri_error("key name \"" + shown +
                       "\" may contain only letters, digits, \"-\", \"_\" and \".\"");
    }
  }
  return Status::Ok();
}

Result<TpmUri> parse_uri(std::string_view text) {
  if (text.size() < kScheme.size() || strncasecmp(text.data(), kScheme.data(), kScheme.size()) != 0)
    return uri_error("URI does not start with \"tpm2:\"");
  text.remove_prefix(kScheme.size());
  if (text.find('#') != std::string_view::npos) return uri_error("URI has a fragment (\"#\")");
  std::string_view path = text, query;
  bool has_query = false;
  if (size_t q = text.find('?'); q != std::string_view::npos) {
    path = text.substr(0, q);
    query = text.substr(q + 1);
    has_query = true;
  }

  TpmUri uri;
  if (!path.empty()) {
    if (path.find('=') == std::string_view::npos && path.find(';') == std::string_view::npos) {
      TPMKEY_TRY(validate_name(path));  // a bare name
      uri.name = std::string(path);
    } else {
      for (std::string_view attr : split(path, ';')) {
        if (attr.empty()) return uri_error("empty attribute (stray \";\")");
        TPMKEY_TRY(parse_path_attr(attr, uri));
      }
    }
  }
  if (has_query) {
    for (std::string_view attr : split(query, '&')) {
      if (attr.empty()) return uri_error("empty query attribute (stray \"&\" or \"?\")");
      TPMKEY_TRY(parse_query_attr(attr, uri));
    }
  }
  int locators = (uri.name ? 1 : 0) + (uri.handle ? 1 : 0) + (uri.file ? 1 : 0);
  if (locators > 1) return uri_error("name, handle and file are mutually exclusive");
  if (uri.pin_source && uri.pin_value) return uri_error("pin-source and pin-value are mutually exclusive");
  return uri;
}

std::string display_uri(const TpmUri& uri) {
  std::string out(kScheme);
  bool only_name = uri.name && !uri.type;
  if (only_name) return out + *uri.name;
  std::vector<std::string> attrs;
  if (uri.name) attrs.push_back("name=" + *uri.name);
  if (uri.handle) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", *uri.handle);
    attrs.push_back(std::string("handle=") + buf);
  }
  if (uri.file) {
    std::string a = "file=";
    pct_encode(*uri.file, a);
    attrs.push_back(a);
  }
  if (uri.type) attrs.push_back(*uri.type == ObjectType::kPrivate ? "type=private" : "type=public");
  for (size_t i = 0; i < attrs.size(); ++i) out += (i ? ";" : "") + attrs[i];
  return out;
}

std::string format_uri(const TpmUri& uri) {
  std::string out = display_uri(uri);
  if (uri.pin_source) {
    out += "?pin-source=";
    pct_encode(*uri.pin_source, out);
  } else if (uri.pin_value) {
    out += "?pin-value=";
    pct_encode(uri.pin_value->data(), uri.pin_value->size(), out);
  }
  return out;
}

bool operator==(const TpmUri& a, const TpmUri& b) {
  auto same_pin = [](const std::optional<SecretBytes>& x, const std::optional<SecretBytes>& y) {
    if (x.has_value() != y.has_value()) return false;
    if (!x) return true;
    return x->size() == y->size() && CRYPTO_memcmp(x->data(), y->data(), x->size()) == 0;
  };
  return a.name == b.name && a.handle == b.handle && a.file == b.file && a.type == b.type &&
         a.pin_source == b.pin_source && same_pin(a.pin_value, b.pin_value);
}

}  // namespace tpmkey
