// Extended grapheme clusters against the rules of Unicode UAX #29 (one case or more per rule) and
// code point properties from the Unicode Character Database.
#include "services/encoder/tokenizers/grapheme.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace dgrid::encoder {
namespace {

std::vector<std::string> Clusters(const std::string& text) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = GraphemeEnd(text, pos);
    EXPECT_GT(end, pos);
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

using Strings = std::vector<std::string>;

TEST(GraphemeTest, Properties) {
  EXPECT_EQ(GetGraphemeProperties(U'a').gcb, GraphemeBreak::kOther);
  EXPECT_EQ(GetGraphemeProperties(0x0D).gcb, GraphemeBreak::kCr);
  EXPECT_EQ(GetGraphemeProperties(0x0A).gcb, GraphemeBreak::kLf);
  EXPECT_EQ(GetGraphemeProperties(0x00AD).gcb, GraphemeBreak::kControl);  // soft hyphen
  EXPECT_EQ(GetGraphemeProperties(0x0301).gcb, GraphemeBreak::kExtend);
  EXPECT_EQ(GetGraphemeProperties(0xFE0F).gcb, GraphemeBreak::kExtend);
  EXPECT_EQ(GetGraphemeProperties(0x1F3FB).gcb, GraphemeBreak::kExtend);  // skin tone modifier
  EXPECT_EQ(GetGraphemeProperties(0x200D).gcb, GraphemeBreak::kZwj);
  EXPECT_EQ(GetGraphemeProperties(0x1F1E6).gcb, GraphemeBreak::kRegionalIndicator);
  EXPECT_EQ(GetGraphemeProperties(0x0600).gcb, GraphemeBreak::kPrepend);
  EXPECT_EQ(GetGraphemeProperties(0x093E).gcb, GraphemeBreak::kSpacingMark);
  EXPECT_EQ(GetGraphemeProperties(0x1100).gcb, GraphemeBreak::kL);
  EXPECT_EQ(GetGraphemeProperties(0x1161).gcb, GraphemeBreak::kV);
  EXPECT_EQ(GetGraphemeProperties(0x11A8).gcb, GraphemeBreak::kT);
  EXPECT_EQ(GetGraphemeProperties(0xAC00).gcb, GraphemeBreak::kLv);
  EXPECT_EQ(GetGraphemeProperties(0xAC01).gcb, GraphemeBreak::kLvt);
  EXPECT_EQ(GetGraphemeProperties(0xD7A3).gcb, GraphemeBreak::kLvt);
  EXPECT_TRUE(GetGraphemeProperties(0x2764).extended_pictographic);
  EXPECT_TRUE(GetGraphemeProperties(0x1F680).extended_pictographic);
  EXPECT_TRUE(GetGraphemeProperties(0x00A9).extended_pictographic);
  EXPECT_FALSE(GetGraphemeProperties(U'#').extended_pictographic);
  EXPECT_EQ(GetGraphemeProperties(0x094D).incb, ConjunctBreak::kLinker);
  EXPECT_EQ(GetGraphemeProperties(0x0915).incb, ConjunctBreak::kConsonant);
  EXPECT_EQ(GetGraphemeProperties(0x200D).incb, ConjunctBreak::kExtend);
  EXPECT_EQ(GetGraphemeProperties(0x0905).incb, ConjunctBreak::kNone);  // independent vowel
}

TEST(GraphemeTest, ControlsAndCrLf) {  // GB3, GB4, GB5
  EXPECT_EQ(Clusters("\r\n"), (Strings{"\r\n"}));
  EXPECT_EQ(Clusters("\n\r"), (Strings{"\n", "\r"}));
  EXPECT_EQ(Clusters("a\r\nb"), (Strings{"a", "\r\n", "b"}));
  EXPECT_EQ(Clusters("\n\xcc\x81"), (Strings{"\n", "\xcc\x81"}));
  EXPECT_EQ(Clusters("a\t"), (Strings{"a", "\t"}));
}

TEST(GraphemeTest, Hangul) {  // GB6, GB7, GB8
  EXPECT_EQ(Clusters("\u1100\u1161\u11a8"), (Strings{"\u1100\u1161\u11a8"}));
  EXPECT_EQ(Clusters("\u1100\u1100\uac00"), (Strings{"\u1100\u1100\uac00"}));
  EXPECT_EQ(Clusters("\uac00\u1161\u11a8"), (Strings{"\uac00\u1161\u11a8"}));
  EXPECT_EQ(Clusters("\uac01\u11a8"), (Strings{"\uac01\u11a8"}));
  EXPECT_EQ(Clusters("\uac01\u1161"), (Strings{"\uac01", "\u1161"}));
  EXPECT_EQ(Clusters("\u11a8\u1100"), (Strings{"\u11a8", "\u1100"}));
  EXPECT_EQ(Clusters("\uac00\uac00"), (Strings{"\uac00", "\uac00"}));
}

TEST(GraphemeTest, ExtendSpacingMarkPrepend) {  // GB9, GB9a, GB9b
  EXPECT_EQ(Clusters("e\u0301\u0302x"), (Strings{"e\u0301\u0302", "x"}));
  EXPECT_EQ(Clusters(" \u0301"), (Strings{" \u0301"}));
  EXPECT_EQ(Clusters("\u0301\u0301"), (Strings{"\u0301\u0301"}));
  EXPECT_EQ(Clusters("a\u200d"), (Strings{"a\u200d"}));
  EXPECT_EQ(Clusters("\u0915\u093e"), (Strings{"\u0915\u093e"}));
  EXPECT_EQ(Clusters("\u0600\u0661"), (Strings{"\u0600\u0661"}));
  EXPECT_EQ(Clusters("\u0600\n"), (Strings{"\u0600", "\n"}));
}

TEST(GraphemeTest, IndicConjuncts) {  // GB9c
  EXPECT_EQ(Clusters("\u0915\u094d\u0937"), (Strings{"\u0915\u094d\u0937"}));
  EXPECT_EQ(Clusters("\u0915\u094d\u200d\u0937"), (Strings{"\u0915\u094d\u200d\u0937"}));
  EXPECT_EQ(Clusters("\u0915\u093c\u094d\u0937"), (Strings{"\u0915\u093c\u094d\u0937"}));
  EXPECT_EQ(Clusters("\u0915\u0937"), (Strings{"\u0915", "\u0937"}));
  // A linker needs a consonant before it.
  EXPECT_EQ(Clusters("\u00a0\u094d\u0937"), (Strings{"\u00a0\u094d", "\u0937"}));
  EXPECT_EQ(Clusters("a\u09cd\u0926"), (Strings{"a\u09cd", "\u0926"}));
}

TEST(GraphemeTest, EmojiSequences) {  // GB11
  EXPECT_EQ(Clusters("\U0001f469\u200d\U0001f680"), (Strings{"\U0001f469\u200d\U0001f680"}));
  EXPECT_EQ(Clusters("\u2764\ufe0f\u200d\U0001f525"), (Strings{"\u2764\ufe0f\u200d\U0001f525"}));
  EXPECT_EQ(Clusters("\U0001f44d\U0001f3fd\U0001f44d"),
            (Strings{"\U0001f44d\U0001f3fd", "\U0001f44d"}));
  EXPECT_EQ(Clusters("a\u200d\U0001f680"), (Strings{"a\u200d", "\U0001f680"}));
  EXPECT_EQ(Clusters("\U0001f600\u200d\u0301\U0001f600"),
            (Strings{"\U0001f600\u200d\u0301", "\U0001f600"}));
}

TEST(GraphemeTest, RegionalIndicatorPairs) {  // GB12, GB13
  const std::string f = "\U0001f1eb", r = "\U0001f1f7", d = "\U0001f1e9", e = "\U0001f1ea";
  EXPECT_EQ(Clusters(f + r + d + e), (Strings{f + r, d + e}));
  EXPECT_EQ(Clusters(f + r + d), (Strings{f + r, d}));
  EXPECT_EQ(Clusters("a" + f + r), (Strings{"a", f + r}));
  EXPECT_EQ(Clusters(f + "\u0301" + r), (Strings{f + "\u0301", r}));
}

TEST(GraphemeTest, OtherwiseBreak) {  // GB999
  EXPECT_EQ(Clusters("ab"), (Strings{"a", "b"}));
  EXPECT_EQ(Clusters("\U0001f600\U0001f600"), (Strings{"\U0001f600", "\U0001f600"}));
  EXPECT_EQ(Clusters("\u6771\u4eac"), (Strings{"\u6771", "\u4eac"}));
}

}  // namespace
}  // namespace dgrid::encoder
