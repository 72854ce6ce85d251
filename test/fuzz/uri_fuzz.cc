// Fuzz target: tpm2: URIs (keystore/uri.h). Whatever parse_uri accepts must format canonically
// to a URI that parses back to the same thing, and display_uri (no query) must parse back to the
// same object without its query.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "keystore/uri.h"
#include "test/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tpmkey;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto uri = parse_uri(text);
  if (!uri) {
    TPMKEY_FUZZ_CHECK(!uri.error().text().empty());
    return 0;
  }
  (void)validate_name(text);

  const std::string canonical = format_uri(*uri);
  auto again = parse_uri(canonical);
  TPMKEY_FUZZ_CHECK(again.ok());
  TPMKEY_FUZZ_CHECK(*again == *uri);
  TPMKEY_FUZZ_CHECK(format_uri(*again) == canonical);

  // display_uri drops the query (pin-source, pin-value): what is left names the same object.
  TpmUri without_query = *uri;
  without_query.pin_source.reset();
  without_query.pin_value.reset();
  auto shown = parse_uri(display_uri(*uri));
  TPMKEY_FUZZ_CHECK(shown.ok());
  TPMKEY_FUZZ_CHECK(*shown == without_query);
  TPMKEY_FUZZ_CHECK(display_uri(*shown) == display_uri(*uri));
  return 0;
}
