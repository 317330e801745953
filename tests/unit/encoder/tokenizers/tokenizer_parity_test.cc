// Every prompt of make_tokenizer_fixtures.py (>= 1000 each for T5 and CLIP) must give exactly the
// ids transformers gives: padded/truncated ids, untruncated length and the ids FluxPipeline reports
// as removed (untruncated_ids[max_length - 1 : -1]).
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/encoder/tokenizers/clip_tokenizer.h"
#include "services/encoder/tokenizers/precompiled_charsmap.h"
#include "services/encoder/tokenizers/t5_tokenizer.h"
#include "services/encoder/tokenizers/tokenizer_common.h"
#include "tests/unit/encoder/tokenizers/tokenizer_test_util.h"

namespace dgrid::encoder {
namespace {

nlohmann::json LoadCases(const std::string& name) {
  const std::string dir = testing::FixtureDir();
  if (dir.empty()) return nullptr;
  auto parsed = ReadJsonFile(dir + "/" + name + "_cases.json");
  if (!parsed.ok()) {
    ADD_FAILURE() << parsed.status() << " (run the tokenizer_fixtures ctest step first)";
    return nullptr;
  }
  return *parsed;
}

std::string Escaped(const std::string& text) {
  std::string out;
  for (unsigned char c : text.substr(0, 120)) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return text.size() > 120 ? out + "..." : out;
}

template <typename Tokenizer>
void CompareAll(const Tokenizer& tok, const nlohmann::json& data, const char* name) {
  const int max_length = data["max_length"].get<int>();
  const auto& cases = data["cases"];
  ASSERT_GE(cases.size(), 1000u);
  int mismatches = 0;
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const auto expected = c["ids"].get<std::vector<int32_t>>();
    const auto untruncated = c["untruncated_ids"].get<std::vector<int32_t>>();
    absl::StatusOr<TokenizedPrompt> got = tok.Encode(text, max_length);
    ASSERT_TRUE(got.ok()) << got.status() << " for '" << Escaped(text) << "'";
    std::vector<int32_t> removed;
    if (static_cast<int>(untruncated.size()) > max_length) {
      removed.assign(untruncated.begin() + (max_length - 1), untruncated.end() - 1);
    }
    const bool same = got->input_ids == expected &&
                      got->untruncated_num_tokens == static_cast<int>(untruncated.size()) &&
                      got->truncated == (static_cast<int>(untruncated.size()) > max_length) &&
                      got->removed_ids == removed &&
                      got->num_tokens == std::min<int>(untruncated.size(), max_length);
    if (!same) {
      if (++mismatches <= 10) {
        ADD_FAILURE() << name << " mismatch for '" << Escaped(text) << "'\n expected "
                      << ::testing::PrintToString(expected) << "\n got      "
                      << ::testing::PrintToString(got->input_ids) << " untruncated "
                      << got->untruncated_num_tokens << " vs " << untruncated.size();
      }
    }
  }
  std::printf("[%s] compared %zu strings against %s: %d mismatches\n", name, cases.size(),
              data["reference"].get<std::string>().c_str(), mismatches);
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerParityTest, T5MatchesTransformers) {
  const nlohmann::json data = LoadCases("t5");
  if (data.is_null()) GTEST_SKIP() << "DGRID_BUILD_DIR not set";
  auto tok = T5Tokenizer::Load(data["tokenizer_dir"].get<std::string>());
  ASSERT_TRUE(tok.ok()) << tok.status();
  CompareAll(**tok, data, "t5");
}

// The charsmap normalizer alone, against HF tokenizers' Precompiled normalizer on the T5 strings
// and thousands of random strings of marks, spaces, emoji, jamo and Indic letters.
TEST(TokenizerParityTest, T5NormalizerMatchesTokenizers) {
  const nlohmann::json data = LoadCases("t5_normalizer");
  if (data.is_null()) GTEST_SKIP() << "DGRID_BUILD_DIR not set";
  auto model = ReadFileToString(testing::FixtureDir() + "/t5/spiece.model");
  ASSERT_TRUE(model.ok()) << model.status();
  auto blob = PrecompiledCharsmap::FromModelProto(*model);
  ASSERT_TRUE(blob.ok()) << blob.status();
  ASSERT_FALSE(blob->empty());
  auto charsmap = PrecompiledCharsmap::Parse(*blob);
  ASSERT_TRUE(charsmap.ok()) << charsmap.status();
  const auto& cases = data["cases"];
  ASSERT_GE(cases.size(), 5000u);
  int mismatches = 0;
  std::string got;
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const std::string expected = c["normalized"].get<std::string>();
    got.clear();
    charsmap->Normalize(text, &got);
    if (got != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "normalized '" << Escaped(text) << "'\n expected '" << Escaped(expected)
                    << "'\n got      '" << Escaped(got) << "'";
    }
  }
  std::printf("[t5 normalizer] compared %zu strings against %s: %d mismatches\n", cases.size(),
              data["reference"].get<std::string>().c_str(), mismatches);
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerParityTest, ClipMatchesTransformers) {
  const nlohmann::json data = LoadCases("clip");
  if (data.is_null()) GTEST_SKIP() << "DGRID_BUILD_DIR not set";
  auto tok = ClipTokenizer::Load(data["tokenizer_dir"].get<std::string>());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->model_max_length(), 77);
  CompareAll(**tok, data, "clip");
}

TEST(TokenizerParityTest, DecodeRoundTripsPlainText) {
  if (testing::FixtureDir().empty()) GTEST_SKIP() << "DGRID_BUILD_DIR not set";
  auto t5 = T5Tokenizer::Load(testing::FixtureDir() + "/t5");
  auto clip = ClipTokenizer::Load(testing::FixtureDir() + "/clip");
  ASSERT_TRUE(t5.ok()) << t5.status();
  ASSERT_TRUE(clip.ok()) << clip.status();
  const std::string text = "a photo of a cat sitting on the mat";
  auto t5_ids = (*t5)->Encode(text, 64);
  auto clip_ids = (*clip)->Encode(text, 77);
  ASSERT_TRUE(t5_ids.ok() && clip_ids.ok());
  EXPECT_EQ((*t5)->Decode(t5_ids->input_ids), text);
  EXPECT_EQ((*clip)->Decode(clip_ids->input_ids), text);
}

}  // namespace
}  // namespace dgrid::encoder
