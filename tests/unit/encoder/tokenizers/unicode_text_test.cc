// Unicode helpers against facts of the Unicode standard (UnicodeData.txt, UAX #15).
#include "services/encoder/tokenizers/unicode_text.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace dgrid::encoder {
namespace {

TEST(UnicodeTextTest, DecodesAndRejectsUtf8) {
  auto ok = DecodeUtf8("a\xc3\xa9\xe6\x9d\xb1\xf0\x9f\x98\x80");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, (std::u32string{U'a', 0xE9, 0x6771, 0x1F600}));
  EXPECT_EQ(EncodeUtf8(*ok), "a\xc3\xa9\xe6\x9d\xb1\xf0\x9f\x98\x80");
  for (const char* bad :
       {"\xc0\xaf", "\xe0\x80\xaf", "\xed\xbf\xbf", "\xf4\x90\x80\x80", "\xf0\x9f\x98", "\xff"}) {
    EXPECT_EQ(DecodeUtf8(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// Valid text decodes as DecodeUtf8 does; a byte that starts no complete sequence is one U+FFFD and
// the position never runs past the end.
TEST(UnicodeTextTest, NextCodepointStaysInsideBrokenText) {
  const std::string good = "a\xc3\xa9\xe6\x9d\xb1\xf0\x9f\x98\x80";
  std::u32string out;
  for (size_t pos = 0; pos < good.size();) out.push_back(NextCodepoint(good, &pos));
  EXPECT_EQ(out, *DecodeUtf8(good));
  struct Case {
    std::string text;
    std::u32string want;
  };
  for (const Case& c : std::vector<Case>{
           {"\x80", {0xFFFD}},                                 // stray continuation byte
           {"a\xf0\x9f\x98", {U'a', 0xFFFD, 0xFFFD, 0xFFFD}},  // cut short by the end
           {"\xe6\x9dz", {0xFFFD, 0xFFFD, U'z'}},              // cut short by a non-continuation
           {"\xff\xc3\xa9", {0xFFFD, 0xE9}},                   // no lead byte, then a valid one
       }) {
    std::u32string got;
    size_t pos = 0;
    while (pos < c.text.size()) got.push_back(NextCodepoint(c.text, &pos));
    EXPECT_EQ(pos, c.text.size());
    EXPECT_EQ(got, c.want);
  }
}

TEST(UnicodeTextTest, Classes) {
  EXPECT_TRUE(IsLetter(U'a'));
  EXPECT_TRUE(IsLetter(0x6771));   // CJK ideograph (Lo)
  EXPECT_TRUE(IsLetter(0x02B0));   // modifier letter (Lm)
  EXPECT_FALSE(IsLetter(0x0301));  // combining acute (Mn)
  EXPECT_TRUE(IsNumber(U'7'));
  EXPECT_TRUE(IsNumber(0x00BD));  // vulgar fraction one half (No)
  EXPECT_TRUE(IsNumber(0x216B));  // roman numeral twelve (Nl)
  EXPECT_FALSE(IsNumber(U'x'));
  for (char32_t ws :
       {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2028, 0x3000}) {
    EXPECT_TRUE(IsSpace(ws)) << std::hex << static_cast<uint32_t>(ws);
  }
  EXPECT_FALSE(IsSpace(0x200B));  // zero width space is not White_Space
  EXPECT_FALSE(IsSpace(0x1C));
}

TEST(UnicodeTextTest, Lowercase) {
  std::u32string out;
  for (char32_t c : std::u32string{U'A', 0xC0, 0x3A3, 0x130, 0x1E9E, 0x212A})
    AppendLowercase(c, &out);
  // A -> a, À -> à, Σ -> σ (no final-sigma rule), İ -> i + combining dot, ẞ -> ß, Kelvin -> k.
  EXPECT_EQ(out, (std::u32string{U'a', 0xE0, 0x3C3, U'i', 0x307, 0xDF, U'k'}));
}

TEST(UnicodeTextTest, Nfc) {
  EXPECT_EQ(NormalizeNfc(U"e\u0301"), U"\u00e9");
  EXPECT_EQ(NormalizeNfc(U"A\u030a"), U"\u00c5");
  EXPECT_EQ(NormalizeNfc(U"\u212b"), U"\u00c5");               // Angstrom sign (singleton)
  EXPECT_EQ(NormalizeNfc(U"\u1100\u1161\u11a8"), U"\uac01");   // Hangul LVT
  EXPECT_EQ(NormalizeNfc(U"a\u0301\u0323"), U"\u1ea1\u0301");  // reordering, then composition
  EXPECT_EQ(NormalizeNfc(U"\u0344"), U"\u0308\u0301");         // excluded non-starter decomposition
  EXPECT_EQ(NormalizeNfc(U"\u0958"), U"\u0915\u093c");         // composition exclusion
  EXPECT_EQ(NormalizeNfc(U"\ufb01"), U"\ufb01");               // compatibility only: unchanged
  EXPECT_EQ(NormalizeNfc(U"plain ascii"), U"plain ascii");
}

}  // namespace
}  // namespace dgrid::encoder
