// Error paths of the tokenizers: missing and corrupt files, invalid UTF-8, bad max_length, and a
// 100k-character prompt (truncated, in bounded time).
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "services/encoder/tokenizers/clip_tokenizer.h"
#include "services/encoder/tokenizers/precompiled_charsmap.h"
#include "services/encoder/tokenizers/t5_tokenizer.h"
#include "services/encoder/tokenizers/tokenizer_common.h"
#include "tests/unit/encoder/tokenizers/tokenizer_test_util.h"

namespace dgrid::encoder {
namespace {

// POSIX calls, not std::filesystem: libtorch.so exports a broken copy of std::filesystem that wins
// in LibTorch-linked binaries (see common/files.h).
void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

void CopyFile(const std::string& from, const std::string& to) {
  auto content = ReadFileToString(from);
  ASSERT_TRUE(content.ok()) << content.status();
  WriteFile(to, *content);
}

// A folder holding copies of the files of fixture tokenizer `name` ("t5" or "clip").
std::string CopyOfFixture(const std::string& name, const std::string& tag) {
  const std::string dir = ::testing::TempDir() + "/dgrid_tok_" + tag;
  mkdir(dir.c_str(), 0755);
  const std::string src = testing::FixtureDir() + "/" + name;
  for (const char* file : {"spiece.model", "tokenizer_config.json", "special_tokens_map.json",
                           "vocab.json", "merges.txt"}) {
    unlink((dir + "/" + file).c_str());
    if (FileExists(src + "/" + file)) CopyFile(src + "/" + file, dir + "/" + file);
  }
  return dir;
}

#define REQUIRE_FIXTURES() \
  if (testing::FixtureDir().empty()) GTEST_SKIP() << "DGRID_BUILD_DIR not set"

TEST(TokenizerErrorsTest, MissingFilesAreNotFoundNamingThePath) {
  const std::string missing = ::testing::TempDir() + "/dgrid_tok_does_not_exist";
  auto t5 = T5Tokenizer::Load(missing);
  ASSERT_FALSE(t5.ok());
  EXPECT_EQ(t5.status().code(), absl::StatusCode::kNotFound) << t5.status();
  EXPECT_NE(t5.status().message().find(missing + "/spiece.model"), absl::string_view::npos)
      << t5.status();
  auto clip = ClipTokenizer::Load(missing);
  ASSERT_FALSE(clip.ok());
  EXPECT_EQ(clip.status().code(), absl::StatusCode::kNotFound) << clip.status();
  EXPECT_NE(clip.status().message().find(missing + "/vocab.json"), absl::string_view::npos)
      << clip.status();
}

TEST(TokenizerErrorsTest, MissingMergesIsNotFound) {
  REQUIRE_FIXTURES();
  const std::string dir = CopyOfFixture("clip", "no_merges");
  unlink((dir + "/merges.txt").c_str());
  auto clip = ClipTokenizer::Load(dir);
  ASSERT_FALSE(clip.ok());
  EXPECT_EQ(clip.status().code(), absl::StatusCode::kNotFound) << clip.status();
  EXPECT_NE(clip.status().message().find(dir + "/merges.txt"), absl::string_view::npos)
      << clip.status();
}

TEST(TokenizerErrorsTest, CorruptSentencePieceModelIsRejected) {
  REQUIRE_FIXTURES();
  const std::string dir = CopyOfFixture("t5", "bad_spiece");
  for (const std::string& content :
       {std::string("this is not a protobuf \xff\xfe"), std::string()}) {
    WriteFile(dir + "/spiece.model", content);
    auto t5 = T5Tokenizer::Load(dir);
    ASSERT_FALSE(t5.ok());
    EXPECT_EQ(t5.status().code(), absl::StatusCode::kInvalidArgument) << t5.status();
    EXPECT_NE(t5.status().message().find("spiece.model"), absl::string_view::npos) << t5.status();
  }
}

// A model with an empty piece: Debian's SentencePiece (0.1.97) throws from its trie builder
// instead of returning a status; found by tests/fuzz/t5_tokenizer_fuzz.cc.
TEST(TokenizerErrorsTest, EmptyPieceIsInvalidArgumentNotACrash) {
  const auto piece = [](const std::string& text, char type) {
    const std::string body = std::string("\x0a") + static_cast<char>(text.size()) + text +
                             std::string("\x15\x00\x00\x80\xbf\x18", 6) + type;
    return std::string("\x0a") + static_cast<char>(body.size()) + body;
  };
  TokenizerFiles files;
  files.dir = "/m";
  files.files["spiece.model"] =
      piece("<pad>", 3) + piece("</s>", 3) + piece("<unk>", 2) + piece("", 1) + piece("a", 1);
  auto t5 = T5Tokenizer::FromFiles(files);
  ASSERT_FALSE(t5.ok());
  EXPECT_EQ(t5.status().code(), absl::StatusCode::kInvalidArgument) << t5.status();
  EXPECT_NE(t5.status().message().find("/m/spiece.model"), absl::string_view::npos) << t5.status();
}

TEST(TokenizerErrorsTest, CorruptT5ConfigIsRejected) {
  REQUIRE_FIXTURES();
  const std::string dir = CopyOfFixture("t5", "bad_t5_config");
  WriteFile(dir + "/tokenizer_config.json", "{\"eos_token\": ");
  auto t5 = T5Tokenizer::Load(dir);
  ASSERT_FALSE(t5.ok());
  EXPECT_EQ(t5.status().code(), absl::StatusCode::kInvalidArgument) << t5.status();
  WriteFile(dir + "/tokenizer_config.json", "{\"eos_token\": \"<no such piece>\"}");
  t5 = T5Tokenizer::Load(dir);
  ASSERT_FALSE(t5.ok());
  EXPECT_EQ(t5.status().code(), absl::StatusCode::kInvalidArgument) << t5.status();
}

TEST(TokenizerErrorsTest, T5LoadsFromSpieceModelAlone) {
  REQUIRE_FIXTURES();
  const std::string dir = CopyOfFixture("t5", "spiece_only");
  unlink((dir + "/tokenizer_config.json").c_str());
  unlink((dir + "/special_tokens_map.json").c_str());
  auto alone = T5Tokenizer::Load(dir);
  auto full = T5Tokenizer::Load(testing::FixtureDir() + "/t5");
  ASSERT_TRUE(alone.ok()) << alone.status();
  ASSERT_TRUE(full.ok()) << full.status();
  const std::string prompt = "a cat <extra_id_0> on </s> a mat";
  auto a = (*alone)->Encode(prompt, 32);
  auto b = (*full)->Encode(prompt, 32);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->input_ids, b->input_ids);
  EXPECT_EQ((*alone)->pad_id(), 0);
  EXPECT_EQ((*alone)->eos_id(), 1);
  EXPECT_EQ((*alone)->unk_id(), 2);
}

// FromFiles (bytes, no folder) builds the same tokenizers as Load, and names a missing file.
TEST(TokenizerErrorsTest, FromFilesMatchesLoad) {
  REQUIRE_FIXTURES();
  for (const char* name : {"t5", "clip"}) {
    const std::string dir = testing::FixtureDir() + "/" + name;
    auto files = ReadTokenizerFiles(dir, {},
                                    {"spiece.model", "vocab.json", "merges.txt",
                                     "tokenizer_config.json", "special_tokens_map.json"});
    ASSERT_TRUE(files.ok()) << files.status();
    const std::string prompt = "A cat <extra_id_0> on </s> a mat, café <|endoftext|>";
    absl::StatusOr<TokenizedPrompt> from_files, loaded;
    if (std::string(name) == "t5") {
      auto a = T5Tokenizer::FromFiles(*files);
      auto b = T5Tokenizer::Load(dir);
      ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
      from_files = (*a)->Encode(prompt, 32);
      loaded = (*b)->Encode(prompt, 32);
    } else {
      auto a = ClipTokenizer::FromFiles(*files);
      auto b = ClipTokenizer::Load(dir);
      ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
      from_files = (*a)->Encode(prompt, 77);
      loaded = (*b)->Encode(prompt, 77);
    }
    ASSERT_TRUE(from_files.ok() && loaded.ok());
    EXPECT_EQ(from_files->input_ids, loaded->input_ids) << name;
  }
  TokenizerFiles empty;
  empty.dir = "/nowhere";
  auto t5 = T5Tokenizer::FromFiles(empty);
  EXPECT_EQ(t5.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(t5.status().message().find("/nowhere/spiece.model"), absl::string_view::npos);
  empty.files["vocab.json"] = "{\"a\": 0}";
  auto clip = ClipTokenizer::FromFiles(empty);
  EXPECT_EQ(clip.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(clip.status().message().find("/nowhere/merges.txt"), absl::string_view::npos);
}

TEST(TokenizerErrorsTest, CorruptClipFilesAreRejected) {
  REQUIRE_FIXTURES();
  const std::string dir = CopyOfFixture("clip", "bad_clip");
  WriteFile(dir + "/vocab.json", "[1, 2");
  auto clip = ClipTokenizer::Load(dir);
  ASSERT_FALSE(clip.ok());
  EXPECT_EQ(clip.status().code(), absl::StatusCode::kInvalidArgument) << clip.status();

  CopyFile(testing::FixtureDir() + "/clip/vocab.json", dir + "/vocab.json");
  for (const std::string& merges :
       {std::string("#version: 0.2\na b c\n"),
        std::string("#version: 0.2\n\xe2\x82\xac\xe2\x82\xac zzzzqqq\n")}) {
    WriteFile(dir + "/merges.txt", merges);
    clip = ClipTokenizer::Load(dir);
    ASSERT_FALSE(clip.ok());
    EXPECT_EQ(clip.status().code(), absl::StatusCode::kInvalidArgument) << clip.status();
    EXPECT_NE(clip.status().message().find("merges.txt"), absl::string_view::npos) << clip.status();
  }
}

TEST(TokenizerErrorsTest, MalformedCharsmapIsInvalidArgument) {
  using std::string_literals::operator""s;
  EXPECT_EQ(PrecompiledCharsmap::Parse("\x01\x00"s).status().code(),
            absl::StatusCode::kInvalidArgument);  // shorter than the header
  EXPECT_EQ(PrecompiledCharsmap::Parse("\x08\x00\x00\x00\x00\x00\x00\x00"s).status().code(),
            absl::StatusCode::kInvalidArgument);  // trie larger than the blob
  EXPECT_EQ(PrecompiledCharsmap::Parse("\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00"s).status().code(),
            absl::StatusCode::kInvalidArgument);  // trie size not a multiple of 4
  EXPECT_EQ(PrecompiledCharsmap::Parse("\x04\x00\x00\x00\x00\x00\x00\x00\xff"s).status().code(),
            absl::StatusCode::kInvalidArgument);  // replacements not UTF-8
  // Truncated length-delimited field / truncated varint in the model proto.
  EXPECT_EQ(PrecompiledCharsmap::FromModelProto("\x1a\x05xy").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PrecompiledCharsmap::FromModelProto("\x1a\xff").status().code(),
            absl::StatusCode::kInvalidArgument);
  // No normalizer_spec, or one without a charsmap: the identity, as transformers sets no
  // normalizer.
  auto none = PrecompiledCharsmap::FromModelProto("\x0a\x01x\x1a\x03\x0a\x01n");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  auto identity = PrecompiledCharsmap::Parse(*none);
  ASSERT_TRUE(identity.ok());
  std::string out;
  identity->Normalize("\xef\xbd\x85\xcc\x81 x", &out);
  EXPECT_EQ(out, "\xef\xbd\x85\xcc\x81 x");
}

TEST(TokenizerErrorsTest, InvalidUtf8AndBadMaxLengthAreInvalidArgument) {
  REQUIRE_FIXTURES();
  auto t5 = T5Tokenizer::Load(testing::FixtureDir() + "/t5");
  auto clip = ClipTokenizer::Load(testing::FixtureDir() + "/clip");
  ASSERT_TRUE(t5.ok() && clip.ok());
  for (const std::string& bad :
       {std::string("caf\xe9"), std::string("\xc0\x80"), std::string("a\xed\xa0\x80"),
        std::string("x\xf4\x90\x80\x80"), std::string("\xe2\x82"), std::string("\x80")}) {
    auto a = (*t5)->Encode(bad, 64);
    auto b = (*clip)->Encode(bad, 77);
    ASSERT_FALSE(a.ok());
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << a.status();
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << b.status();
    EXPECT_NE(a.status().message().find("UTF-8"), absl::string_view::npos) << a.status();
  }
  EXPECT_EQ((*t5)->Encode("x", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*clip)->Encode("x", 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerErrorsTest, HundredThousandCharacterPromptIsTruncatedQuickly) {
  REQUIRE_FIXTURES();
  auto t5 = T5Tokenizer::Load(testing::FixtureDir() + "/t5");
  auto clip = ClipTokenizer::Load(testing::FixtureDir() + "/clip");
  ASSERT_TRUE(t5.ok() && clip.ok());
  // One long word (worst case for BPE merging) and ordinary text, 100k characters each.
  for (const std::string& prompt : {std::string(100000, 'a'), [] {
                                      std::string s;
                                      while (s.size() < 100000) s += "A photo of a cat, 東京 😀 ";
                                      return s.substr(0, 100000);
                                    }()}) {
    const auto start = std::chrono::steady_clock::now();
    auto a = (*t5)->Encode(prompt, 512);
    auto b = (*clip)->Encode(prompt, 77);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(a->input_ids.size(), 512u);
    EXPECT_EQ(b->input_ids.size(), 77u);
    EXPECT_TRUE(a->truncated);
    EXPECT_TRUE(b->truncated);
    EXPECT_EQ(a->input_ids.back(), (*t5)->eos_id());
    EXPECT_EQ(b->input_ids.back(), (*clip)->eos_id());
    std::printf("100k-character prompt: T5 + CLIP in %.3f s\n", seconds);
    EXPECT_LT(seconds, 10.0);
  }
}

}  // namespace
}  // namespace dgrid::encoder
