// The tpm2: URI (docs/uri.md): parse, validate, format canonically.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

enum class ObjectType { kPrivate, kPublic };

struct TpmUri {
  // At most one of name / handle / file locates an object; none of them means "the keystore".
  std::optional<std::string> name;
  std::optional<uint32_t> handle;
  std::optional<std::string> file;
  std::optional<ObjectType> type;
  std::optional<std::string> pin_source;
  std::optional<SecretBytes> pin_value;  // a secret: never printed by display()

  bool names_keystore() const { return !name && !handle && !file; }
};

// Keystore entry names: 1*( ALPHA / DIGIT / "-" / "_" / "." ), no leading ".", at most 128.
inline constexpr size_t kMaxNameLength = 128;
Status validate_name(std::string_view name);

Result<TpmUri> parse_uri(std::string_view text);
// The canonical form; parse_uri(format_uri(u)) == u. Contains the pin-value if there is one.
std::string format_uri(const TpmUri& uri);
// The canonical form without the query, for messages: never shows a pin.
std::string display_uri(const TpmUri& uri);

bool operator==(const TpmUri& a, const TpmUri& b);

}  // namespace tpmkey
