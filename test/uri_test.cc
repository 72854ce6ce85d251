#include <gtest/gtest.h>

#include "keystore/uri.h"

namespace tpmkey {
namespace {

TEST(Uri, BareName) {
  auto u = parse_uri("tpm2:ssh-key_1.main");
  ASSERT_TRUE(u) << u.error().text();
  EXPECT_EQ(u->name, "ssh-key_1.main");
  EXPECT_FALSE(u->handle);
  EXPECT_EQ(format_uri(*u), "tpm2:ssh-key_1.main");
}

TEST(Uri, EmptyNamesKeystore) {
  auto u = parse_uri("tpm2:");
  ASSERT_TRUE(u);
  EXPECT_TRUE(u->names_keystore());
  EXPECT_EQ(format_uri(*u), "tpm2:");
}

TEST(Uri, Attributes) {
  auto u = parse_uri("tpm2:handle=0x81000AbC;type=public");
  ASSERT_TRUE(u) << u.error().text();
  EXPECT_EQ(u->handle, 0x81000ABCu);
  EXPECT_EQ(u->type, ObjectType::kPublic);
  EXPECT_EQ(format_uri(*u), "tpm2:handle=0x81000abc;type=public");
}

TEST(Uri, FileIsPercentDecoded) {
  auto u = parse_uri("tpm2:file=/home/me/my%20key%3B1.pem");
  ASSERT_TRUE(u) << u.error().text();
  EXPECT_EQ(u->file, "/home/me/my key;1.pem");
  EXPECT_EQ(format_uri(*u), "tpm2:file=/home/me/my%20key%3B1.pem");
}

TEST(Uri, Query) {
  auto u = parse_uri("tpm2:ssh?pin-value=s%26cret");
  ASSERT_TRUE(u) << u.error().text();
  ASSERT_TRUE(u->pin_value);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(u->pin_value->data()), u->pin_value->size()), "s&cret");
  EXPECT_EQ(display_uri(*u), "tpm2:ssh");  // never shows the pin
  auto v = parse_uri("tpm2:name=ssh?pin-source=/run/pin");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->pin_source, "/run/pin");
}

TEST(Uri, SchemeIsCaseInsensitive) { EXPECT_TRUE(parse_uri("TPM2:abc")); }

struct Bad {
  const char* uri;
  const char* says;  // the offending part the message must name
};

void PrintTo(const Bad& b, std::ostream* os) { *os << b.uri; }

class UriInvalid : public ::testing::TestWithParam<Bad> {};

TEST_P(UriInvalid, ErrorNamesTheProblem) {
  auto u = parse_uri(GetParam().uri);
  ASSERT_FALSE(u) << GetParam().uri;
  EXPECT_EQ(u.error().reason, Reason::kMalformedUri);
  EXPECT_NE(u.error().text().find(GetParam().says), std::string::npos) << u.error().text();
}

INSTANTIATE_TEST_SUITE_P(
    All, UriInvalid,
    ::testing::Values(Bad{"file:/x", "tpm2:"}, Bad{"tpm2:foo=bar", "unknown attribute \"foo\""},
                      Bad{"tpm2:name=a;name=b", "more than once"}, Bad{"tpm2:a/b", "a/b"},
                      Bad{"tpm2:.hidden", "starts with"}, Bad{"tpm2:name=../x", "../x"},
                      Bad{"tpm2:handle=0x01000001", "persistent"}, Bad{"tpm2:handle=0x8100001", "8 hex"},
                      Bad{"tpm2:handle=0x8100000g", "8 hex"}, Bad{"tpm2:file=%zz", "percent"},
                      Bad{"tpm2:file=%4", "percent"}, Bad{"tpm2:file=a%00b", "NUL"},
                      Bad{"tpm2:type=secret", "type"}, Bad{"tpm2:name=a;;type=public", "empty attribute"},
                      Bad{"tpm2:name=a;file=/b", "mutually exclusive"}, Bad{"tpm2:a?pin=1", "pin"},
                      Bad{"tpm2:a?pin-value=1&pin-source=/x", "mutually exclusive"},
                      Bad{"tpm2:a#frag", "fragment"}, Bad{"tpm2:name=", "key name is empty"}, Bad{"tpm2:a;type=public", "without a value"},
                      Bad{"tpm2:file=a b", "percent-encoded"}));

TEST(Uri, LongNameRefused) {
  std::string n(129, 'a');
  EXPECT_FALSE(parse_uri("tpm2:" + n));
  EXPECT_TRUE(parse_uri("tpm2:" + n.substr(1)));
}

TEST(Uri, CanonicalRoundTrip) {
  for (const char* s : {"tpm2:k", "tpm2:name=k;type=private", "tpm2:handle=0x81000001",
                        "tpm2:file=/a%20b/c.pem;type=public", "tpm2:k?pin-value=%00x%FF", "tpm2:k?pin-source=/p%3Fq",
                        "tpm2:?pin-value=x", "tpm2:type=public"}) {
    auto u = parse_uri(s);
    if (std::string(s).find("%00") != std::string::npos) {
      EXPECT_FALSE(u);  // NUL is refused
      continue;
    }
    ASSERT_TRUE(u) << s << ": " << u.error().text();
    std::string canon = format_uri(*u);
    auto again = parse_uri(canon);
    ASSERT_TRUE(again) << canon;
    EXPECT_TRUE(*again == *u) << s << " -> " << canon;
    EXPECT_EQ(format_uri(*again), canon);
  }
}

}  // namespace
}  // namespace tpmkey
