// WanPipeline's prompt cleaning. Expected strings are diffusers' prompt_clean outputs (0.42.1,
// without ftfy) for the same inputs.
#include "services/encoder/wan_text.h"

#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace dgrid::encoder {
namespace {

TEST(WanPromptClean, MatchesDiffusers) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"  a  b  ", "a b"},
      {"x\u3000\u3000y", "x y"},
      {"tab\there", "tab here"},
      {"a&amp;amp;b", "a&b"},  // unescaped twice
      {"&#65;&#x42;&#x43", "ABC"},
      {"&lt;tag&gt; &quot;q&quot; &apos;", "<tag> \"q\" '"},
      {"nb&nbsp;sp", "nb sp"},
      {"\x1c"
       "fs\x1f",
       "fs"},
      {"line\r\n\r\nbreak", "line break"},
      {"&#0;&#xD800;&#1114112;", "\ufffd\ufffd\ufffd"},
      {"&unknown; &amp", "&unknown; &"},
      {"caf\u00e9 \u00a0 ok", "caf\u00e9 ok"},
      {"&#150;", "\u2013"},  // windows-1252
      {"&#1;x", "x"},        // forbidden code points vanish
      {"&#xFFFE;y", "y"},
      {"&ampx", "&x"},
      {"&amp;lt;b&amp;gt;", "<b>"},
      {"a &#13; b", "a b"},
  };
  for (const auto& [in, want] : cases) {
    absl::StatusOr<std::string> got = WanPromptClean(in);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, want) << "input: " << in;
  }
  EXPECT_EQ(WanPromptClean("\xff").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dgrid::encoder
