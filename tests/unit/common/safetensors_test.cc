// Tests of common/safetensors.{h,cc}: loading files written here and by the Python `safetensors`
// package, and the statuses for broken checkpoints.
#include "common/safetensors.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/safetensors_writer.h"

namespace dgrid {
namespace {

using ::dgrid::testing::FileBytes;
using ::dgrid::testing::RawBytes;
using ::dgrid::testing::SafetensorsBytes;
using ::dgrid::testing::ScratchDir;
using ::dgrid::testing::TensorSpec;
using ::dgrid::testing::WriteFile;
using ::dgrid::testing::WriteSafetensors;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::string TensorBytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous().cpu();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

TensorSpec Spec(const std::string& name, const std::string& dtype, const at::Tensor& t) {
  return {name, dtype, t.sizes().vec(), TensorBytes(t)};
}

// One tensor of every dtype, with the ATen tensor it should load as.
std::vector<std::pair<TensorSpec, at::Tensor>> AllDtypes() {
  at::manual_seed(7);
  std::vector<std::pair<std::string, at::Tensor>> named = {
      {"F32", at::randn({3, 4})},
      {"F64", at::randn({5}, at::kDouble)},
      {"F16", at::randn({2, 2, 3}).to(at::kHalf)},
      {"BF16", at::randn({4, 2}).to(at::kBFloat16)},
      {"I64", at::arange(-5, 5, at::kLong) * 1000000007},
      {"I32", at::arange(-6, 6, at::kInt).reshape({3, 4})},
      {"I16", at::arange(-4, 4, at::kShort)},
      {"I8", at::arange(-3, 3, at::kChar)},
      {"U8", at::arange(250, 256, at::kInt).to(at::kByte)},
      {"BOOL", at::tensor({1, 0, 1, 1}, at::kInt).to(at::kBool)},
      {"F8_E4M3", (at::randn({2, 3}) * 8).to(at::kFloat8_e4m3fn)},
  };
  std::vector<std::pair<TensorSpec, at::Tensor>> out;
  for (auto& [dtype, t] : named) out.push_back({Spec("t." + dtype, dtype, t), t});
  return out;
}

void ExpectSameBytes(const at::Tensor& actual, const at::Tensor& expected) {
  EXPECT_EQ(actual.scalar_type(), expected.scalar_type());
  EXPECT_EQ(actual.sizes(), expected.sizes());
  EXPECT_EQ(TensorBytes(actual), TensorBytes(expected));
}

TEST(SafetensorsTest, LoadsEveryDtypeBitExact) {
  ScratchDir dir("st");
  std::vector<TensorSpec> specs;
  for (auto& [spec, t] : AllDtypes()) specs.push_back(spec);
  WriteSafetensors(dir / "all.safetensors", specs);

  absl::StatusOr<WeightMap> weights = LoadSafetensorsFile(dir / "all.safetensors", {});
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->source(), dir / "all.safetensors");
  EXPECT_EQ(weights->size(), specs.size());
  for (auto& [spec, expected] : AllDtypes()) {
    SCOPED_TRACE(spec.name);
    ASSERT_TRUE(weights->Contains(spec.name));
    const at::Tensor& loaded = weights->tensors().at(spec.name);
    EXPECT_TRUE(loaded.device().is_cpu());
    ExpectSameBytes(loaded, expected);
  }
}

TEST(SafetensorsTest, ScalarEmptyAndMetadata) {
  ScratchDir dir("st");
  WriteSafetensors(dir / "m.safetensors",
                   {{"scalar", "F32", {}, RawBytes(std::vector<float>{1.5f})},
                    {"empty", "F32", {0, 7}, ""},
                    {"after", "I32", {2}, RawBytes(std::vector<int32_t>{3, 4})}},
                   {{"format", "pt"}, {"note", "x"}});
  auto file = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().metadata.at("format"), "pt");
  EXPECT_EQ((*file)->header().metadata.at("note"), "x");
  ASSERT_EQ((*file)->header().tensors.size(), 3u);
  // Sorted by offset: "scalar" [0, 4), "empty" [4, 4), "after" [4, 12) (ties broken by end).
  EXPECT_EQ((*file)->header().tensors[0].name, "scalar");
  EXPECT_EQ((*file)->header().tensors[1].name, "empty");
  EXPECT_EQ((*file)->header().tensors[2].name, "after");
  auto bytes = (*file)->Bytes("after");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, RawBytes(std::vector<int32_t>{3, 4}));
  EXPECT_EQ((*file)->Bytes("nope").status().code(), absl::StatusCode::kNotFound);

  auto weights = LoadSafetensorsFile(dir / "m.safetensors", {});
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->tensors().at("scalar").dim(), 0);
  EXPECT_EQ(weights->tensors().at("scalar").item<float>(), 1.5f);
  EXPECT_EQ(weights->tensors().at("empty").sizes(), (std::vector<int64_t>{0, 7}));
}

TEST(SafetensorsTest, ConvertsOnlyFloatingTypes) {
  ScratchDir dir("st");
  std::vector<TensorSpec> specs;
  for (auto& [spec, t] : AllDtypes()) specs.push_back(spec);
  WriteSafetensors(dir / "all.safetensors", specs);

  LoadOptions options;
  options.floating_dtype = "bfloat16";
  auto weights = LoadSafetensorsFile(dir / "all.safetensors", options);
  ASSERT_TRUE(weights.ok()) << weights.status();
  for (auto& [spec, expected] : AllDtypes()) {
    SCOPED_TRACE(spec.name);
    const at::Tensor& loaded = weights->tensors().at(spec.name);
    const bool floating =
        spec.dtype == "F32" || spec.dtype == "F64" || spec.dtype == "F16" || spec.dtype == "BF16";
    // F8 is kept raw; integer types keep theirs; the rest round to bf16 exactly as ATen does.
    ExpectSameBytes(loaded, floating ? expected.to(at::kBFloat16) : expected);
  }
}

TEST(SafetensorsTest, TensorsOutliveTheFile) {
  ScratchDir dir("st");
  at::Tensor t = at::arange(0, 64, at::kFloat);
  WriteSafetensors(dir / "a.safetensors", {Spec("t", "F32", t)});
  auto weights = LoadSafetensorsFile(dir / "a.safetensors", {});
  ASSERT_TRUE(weights.ok()) << weights.status();
  // Overwrite, then delete the file: a tensor that aliased the (now unmapped) mapping would change
  // or fault here.
  WriteSafetensors(dir / "a.safetensors", {Spec("t", "F32", at::zeros({64}))});
  std::remove((dir / "a.safetensors").c_str());
  EXPECT_TRUE(at::equal(weights->tensors().at("t"), t));
  const at::Tensor& loaded = weights->tensors().at("t");
  EXPECT_TRUE(loaded.is_contiguous());
  EXPECT_EQ(loaded.storage().nbytes(), 64 * sizeof(float));
}

TEST(SafetensorsTest, LoadsToCudaWhenPresent) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  ScratchDir dir("st");
  at::Tensor t = at::randn({3, 3});
  WriteSafetensors(dir / "a.safetensors", {Spec("t", "F32", t)});
  LoadOptions options;
  options.device = "cuda:0";
  options.floating_dtype = "float16";
  auto weights = LoadSafetensorsFile(dir / "a.safetensors", options);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const at::Tensor& loaded = weights->tensors().at("t");
  EXPECT_TRUE(loaded.is_cuda());
  ExpectSameBytes(loaded.cpu(), t.to(at::kHalf));
}

TEST(SafetensorsTest, RejectsBadOptions) {
  ScratchDir dir("st");
  WriteSafetensors(dir / "a.safetensors", {Spec("t", "F32", at::ones({2}))});
  LoadOptions bad_dtype;
  bad_dtype.floating_dtype = "float12";
  auto a = LoadSafetensorsFile(dir / "a.safetensors", bad_dtype);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("float12"));
  LoadOptions bad_device;
  bad_device.device = "toaster:0";
  auto b = LoadSafetensorsFile(dir / "a.safetensors", bad_device);
  EXPECT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(), HasSubstr("toaster"));
}

// Folders
// ------------------------------------------------------------------------------------------

void WriteIndex(const std::string& path, const nlohmann::json& weight_map) {
  WriteFile(path,
            nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());
}

TEST(SafetensorsFolderTest, SingleFileAndPreferredFile) {
  ScratchDir dir("stf");
  WriteSafetensors(dir / "diffusion_pytorch_model.safetensors", {Spec("a", "F32", at::ones({2}))});
  auto one = LoadSafetensorsFolder(dir.path(), {});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->source(), dir.path());
  EXPECT_TRUE(one->Contains("a"));

  WriteSafetensors(dir / "diffusion_pytorch_model.fp16.safetensors",
                   {Spec("b", "F16", at::ones({2}, at::kHalf))});
  auto ambiguous = LoadSafetensorsFolder(dir.path(), {});
  EXPECT_EQ(ambiguous.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ambiguous.status().message(),
              AllOf(HasSubstr(dir.path()), HasSubstr("diffusion_pytorch_model.fp16.safetensors")));

  auto preferred =
      LoadSafetensorsFolder(dir.path(), {}, "diffusion_pytorch_model.fp16.safetensors");
  ASSERT_TRUE(preferred.ok()) << preferred.status();
  EXPECT_TRUE(preferred->Contains("b"));
  EXPECT_FALSE(preferred->Contains("a"));

  auto missing = LoadSafetensorsFolder(dir.path(), {}, "nothing.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nothing.safetensors"));
}

TEST(SafetensorsFolderTest, EmptyOrMissingFolderIsNotFound) {
  ScratchDir dir("stf");
  EXPECT_EQ(LoadSafetensorsFolder(dir.path(), {}).status().code(), absl::StatusCode::kNotFound);
  auto missing = LoadSafetensorsFolder(dir / "absent", {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir / "absent"));
}

TEST(SafetensorsFolderTest, ShardedIndex) {
  ScratchDir dir("stf");
  at::Tensor a = at::randn({3, 2});
  at::Tensor b = at::arange(0, 5, at::kLong);
  at::Tensor c = at::randn({4}).to(at::kBFloat16);
  WriteSafetensors(dir / "m-1.safetensors", {Spec("a", "F32", a), Spec("b", "I64", b)});
  WriteSafetensors(dir / "m-2.safetensors", {Spec("c", "BF16", c)});
  WriteIndex(dir / "m.safetensors.index.json",
             {{"a", "m-1.safetensors"}, {"b", "m-1.safetensors"}, {"c", "m-2.safetensors"}});
  LoadOptions options;
  options.floating_dtype = "float32";
  auto weights = LoadSafetensorsFolder(dir.path(), options);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->size(), 3u);
  ExpectSameBytes(weights->tensors().at("a"), a);
  ExpectSameBytes(weights->tensors().at("b"), b);
  ExpectSameBytes(weights->tensors().at("c"), c.to(at::kFloat));

  // Two indexes need a choice.
  WriteIndex(dir / "other.safetensors.index.json", {{"c", "m-2.safetensors"}});
  EXPECT_EQ(LoadSafetensorsFolder(dir.path(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto chosen = LoadSafetensorsFolder(dir.path(), options, "other.safetensors");
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  EXPECT_EQ(chosen->size(), 1u);
}

// Python interop
// -----------------------------------------------------------------------------------

std::string FixtureDir() {
  const char* build = std::getenv("DGRID_BUILD_DIR");
  return absl::StrCat(build ? build : ".", "/parity/common/safetensors");
}

nlohmann::json ReadExpected() {
  std::ifstream in(FixtureDir() + "/expected.json");
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str(), nullptr, false);
}

at::ScalarType TorchDtype(const std::string& name) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"float32", at::kFloat},
      {"float64", at::kDouble},
      {"float16", at::kHalf},
      {"bfloat16", at::kBFloat16},
      {"int64", at::kLong},
      {"int32", at::kInt},
      {"int16", at::kShort},
      {"int8", at::kChar},
      {"uint8", at::kByte},
      {"bool", at::kBool},
      {"float8_e4m3fn", at::kFloat8_e4m3fn}};
  auto it = kTypes.find(name);
  return it == kTypes.end() ? at::kComplexFloat : it->second;
}

void ExpectMatchesPython(const WeightMap& weights, const nlohmann::json& expected,
                         bool to_float32) {
  ASSERT_EQ(weights.size(), expected.size());
  for (const auto& [name, entry] : expected.items()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(weights.Contains(name));
    const at::Tensor& t = weights.tensors().at(name);
    EXPECT_EQ(t.sizes().vec(), entry["shape"].get<std::vector<int64_t>>());
    at::ScalarType stored = TorchDtype(entry["dtype"].get<std::string>());
    const bool floating = entry.contains("values") && stored != at::kFloat8_e4m3fn;
    if (to_float32 && floating) {
      ASSERT_EQ(t.scalar_type(), at::kFloat);
      // Every stored value is exactly representable in float32 except F64 ones, which round.
      std::vector<double> values = entry["values"].get<std::vector<double>>();
      at::Tensor want = at::tensor(values, at::kDouble).to(at::kFloat).reshape(t.sizes());
      EXPECT_TRUE(at::equal(t, want));
    } else {
      EXPECT_EQ(t.scalar_type(), stored);
      EXPECT_EQ(absl::BytesToHexString(TensorBytes(t)), entry["hex"].get<std::string>());
    }
  }
}

TEST(SafetensorsInteropTest, ReadsPythonSingleFile) {
  nlohmann::json expected = ReadExpected();
  ASSERT_TRUE(expected.is_object())
      << "missing " << FixtureDir()
      << "/expected.json; run make_safetensors_fixtures.py (ctest does)";
  auto weights = LoadSafetensorsFile(FixtureDir() + "/single.safetensors", {});
  ASSERT_TRUE(weights.ok()) << weights.status();
  ExpectMatchesPython(*weights, expected, /*to_float32=*/false);
  auto file = SafetensorsFile::Open(FixtureDir() + "/single.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->header().metadata.at("format"), "pt");
}

TEST(SafetensorsInteropTest, ReadsPythonShardsConvertingToFloat32) {
  nlohmann::json expected = ReadExpected();
  ASSERT_TRUE(expected.is_object()) << "missing " << FixtureDir() << "/expected.json";
  LoadOptions options;
  options.floating_dtype = "float32";
  auto weights = LoadSafetensorsFolder(FixtureDir() + "/sharded", options);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ExpectMatchesPython(*weights, expected, /*to_float32=*/true);
}

// Broken checkpoints ------------------------------------------------------------------------------
// Each case asserts the code and that the message names the file and, where there is one, the
// tensor.

// Writes `bytes` and expects Open/Load to fail with `code` and a message naming the file and
// `tensor`.
void ExpectBroken(const ScratchDir& dir, const std::string& bytes, absl::StatusCode code,
                  const std::string& tensor, const std::string& also = "") {
  const std::string path = dir / "bad.safetensors";
  WriteFile(path, bytes);
  absl::StatusOr<WeightMap> loaded = LoadSafetensorsFile(path, {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), code) << loaded.status();
  EXPECT_THAT(loaded.status().message(), HasSubstr(path));
  if (!tensor.empty()) {
    EXPECT_THAT(loaded.status().message(), HasSubstr("'" + tensor + "'"));
  }
  if (!also.empty()) {
    EXPECT_THAT(loaded.status().message(), HasSubstr(also));
  }
  // The pure parser agrees with the file reader.
  auto parsed = ParseSafetensorsHeader(bytes, bytes.size(), path);
  EXPECT_EQ(parsed.status().code(), code);
}

std::string Header(const nlohmann::json& json) { return json.dump(); }

nlohmann::json Entry(const std::string& dtype, nlohmann::json shape, uint64_t begin, uint64_t end) {
  return {{"dtype", dtype}, {"shape", std::move(shape)}, {"data_offsets", {begin, end}}};
}

TEST(SafetensorsCorruptTest, TruncatedData) {
  ScratchDir dir("bad");
  std::string good = SafetensorsBytes({{"w1", "F32", {4}, RawBytes(std::vector<float>(4, 1.f))},
                                       {"w2", "F32", {8}, RawBytes(std::vector<float>(8, 2.f))}});
  ExpectBroken(dir, good.substr(0, good.size() - 5), absl::StatusCode::kDataLoss, "w2",
               "truncated");
}

TEST(SafetensorsCorruptTest, ShorterThanEightBytes) {
  ScratchDir dir("bad");
  ExpectBroken(dir, std::string("\x10\0\0", 3), absl::StatusCode::kDataLoss, "", "3 bytes");
  ExpectBroken(dir, "", absl::StatusCode::kDataLoss, "", "0 bytes");
}

TEST(SafetensorsCorruptTest, HeaderLengthBeyondFile) {
  ScratchDir dir("bad");
  std::string bytes = FileBytes(Header({{"w", Entry("F32", {1}, 0, 4)}}), std::string(4, '\0'));
  bytes[0] = static_cast<char>(bytes[0] + 100);
  ExpectBroken(dir, bytes, absl::StatusCode::kDataLoss, "", "header length");
}

TEST(SafetensorsCorruptTest, HeaderOverLimit) {
  ScratchDir dir("bad");
  std::string bytes(8, '\0');
  const uint64_t n = kMaxSafetensorsHeaderBytes + 1;
  std::memcpy(bytes.data(), &n, 8);
  bytes += "{}";
  ExpectBroken(dir, bytes, absl::StatusCode::kInvalidArgument, "", "exceeds the limit");
}

TEST(SafetensorsCorruptTest, DataOffsetsBeyondFile) {
  ScratchDir dir("bad");
  // The header claims 400 bytes for "big" but the data section holds 16.
  std::string bytes = FileBytes(
      Header({{"small", Entry("F32", {4}, 0, 16)}, {"big", Entry("F32", {100}, 16, 416)}}),
      std::string(16, '\0'));
  ExpectBroken(dir, bytes, absl::StatusCode::kDataLoss, "big", "416");
}

TEST(SafetensorsCorruptTest, OverlappingOffsets) {
  ScratchDir dir("bad");
  std::string bytes =
      FileBytes(Header({{"first", Entry("F32", {4}, 0, 16)}, {"second", Entry("F32", {2}, 8, 16)}}),
                std::string(16, '\0'));
  ExpectBroken(dir, bytes, absl::StatusCode::kInvalidArgument, "second", "'first'");
}

TEST(SafetensorsCorruptTest, ByteLengthDisagreesWithShape) {
  ScratchDir dir("bad");
  std::string bytes =
      FileBytes(Header({{"w", Entry("BF16", {3, 3}, 0, 16)}}), std::string(16, '\0'));
  ExpectBroken(dir, bytes, absl::StatusCode::kInvalidArgument, "w", "needs 18");
}

TEST(SafetensorsCorruptTest, UnknownDtype) {
  ScratchDir dir("bad");
  std::string bytes = FileBytes(Header({{"w", Entry("F7", {2}, 0, 2)}}), std::string(2, '\0'));
  ExpectBroken(dir, bytes, absl::StatusCode::kInvalidArgument, "w", "'F7'");
}

TEST(SafetensorsCorruptTest, NegativeDimension) {
  ScratchDir dir("bad");
  std::string bytes = FileBytes(Header({{"w", Entry("F32", {2, -1}, 0, 0)}}), "");
  ExpectBroken(dir, bytes, absl::StatusCode::kInvalidArgument, "w", "negative");
}

TEST(SafetensorsCorruptTest, ShapeOverflow) {
  ScratchDir dir("bad");
  std::string bytes =
      FileBytes(Header({{"w", Entry("F32", {int64_t{1} << 40, int64_t{1} << 40}, 0, 0)}}), "");
  ExpectBroken(dir, bytes, absl::StatusCode::kInvalidArgument, "w", "overflows");
}

TEST(SafetensorsCorruptTest, BadJson) {
  ScratchDir dir("bad");
  ExpectBroken(dir, FileBytes("{\"w\": {\"dtype\": \"F32\",", ""),
               absl::StatusCode::kInvalidArgument, "", "not valid JSON");
  ExpectBroken(dir, FileBytes("[1, 2]", ""), absl::StatusCode::kInvalidArgument, "", "array");
  ExpectBroken(dir, FileBytes(std::string(100, '['), ""), absl::StatusCode::kInvalidArgument, "",
               "nests deeper");
}

TEST(SafetensorsCorruptTest, MalformedEntries) {
  ScratchDir dir("bad");
  ExpectBroken(dir, FileBytes(Header({{"w", {{"dtype", "F32"}, {"shape", {1}}}}}), "1234"),
               absl::StatusCode::kInvalidArgument, "w", "data_offsets");
  ExpectBroken(dir, FileBytes(Header({{"w", Entry("F32", {1}, 4, 0)}}), "1234"),
               absl::StatusCode::kInvalidArgument, "w", "end before");
  ExpectBroken(dir, FileBytes(Header({{"w", Entry("F32", {1.5}, 0, 4)}}), "1234"),
               absl::StatusCode::kInvalidArgument, "w", "not an integer");
  ExpectBroken(dir, FileBytes(Header({{"w", 3}}), ""), absl::StatusCode::kInvalidArgument, "w");
  ExpectBroken(dir, FileBytes(Header({{"__metadata__", {{"k", 1}}}}), ""),
               absl::StatusCode::kInvalidArgument, "", "__metadata__");
}

TEST(SafetensorsCorruptTest, MissingFileIsNotFound) {
  ScratchDir dir("bad");
  auto loaded = LoadSafetensorsFile(dir / "absent.safetensors", {});
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(loaded.status().message(), HasSubstr(dir / "absent.safetensors"));
}

TEST(SafetensorsCorruptTest, IndexNamesMissingShard) {
  ScratchDir dir("bad");
  WriteSafetensors(dir / "s1.safetensors", {Spec("a", "F32", at::ones({2}))});
  WriteIndex(dir / "m.safetensors.index.json", {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
  auto loaded = LoadSafetensorsFolder(dir.path(), {});
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(loaded.status().message(), AllOf(HasSubstr(dir / "m.safetensors.index.json"),
                                               HasSubstr("s2.safetensors"), HasSubstr("'b'")));
}

TEST(SafetensorsCorruptTest, IndexNamesTensorTheShardLacks) {
  ScratchDir dir("bad");
  WriteSafetensors(dir / "s1.safetensors", {Spec("a", "F32", at::ones({2}))});
  WriteIndex(dir / "m.safetensors.index.json",
             {{"a", "s1.safetensors"}, {"ghost", "s1.safetensors"}});
  auto loaded = LoadSafetensorsFolder(dir.path(), {});
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(loaded.status().message(),
              AllOf(HasSubstr(dir / "s1.safetensors"), HasSubstr("'ghost'")));
}

TEST(SafetensorsCorruptTest, ShardHoldsUnindexedTensor) {
  ScratchDir dir("bad");
  WriteSafetensors(dir / "s1.safetensors",
                   {Spec("a", "F32", at::ones({2})), Spec("stray", "F32", at::ones({1}))});
  WriteIndex(dir / "m.safetensors.index.json", {{"a", "s1.safetensors"}});
  auto loaded = LoadSafetensorsFolder(dir.path(), {});
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(),
              AllOf(HasSubstr(dir / "s1.safetensors"), HasSubstr("'stray'")));
}

TEST(SafetensorsCorruptTest, MalformedIndex) {
  ScratchDir dir("bad");
  WriteFile(dir / "m.safetensors.index.json", "{\"weight_map\": ");
  auto bad_json = LoadSafetensorsFolder(dir.path(), {});
  EXPECT_EQ(bad_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_json.status().message(), HasSubstr(dir / "m.safetensors.index.json"));
  WriteIndex(dir / "m.safetensors.index.json", {{"a", "../escape.safetensors"}});
  auto escape = LoadSafetensorsFolder(dir.path(), {});
  EXPECT_EQ(escape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(escape.status().message(), AllOf(HasSubstr("'a'"), HasSubstr("escape")));
}

}  // namespace
}  // namespace dgrid
