// Tests of common/diffusers_layout.{h,cc}: JsonConfig getters, model_index.json, Hugging Face cache
// folders.
#include "common/diffusers_layout.h"
#include "common/files.h"

#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/safetensors_writer.h"

namespace dgrid {
namespace {

using ::dgrid::testing::MakeDirs;
using ::dgrid::testing::ScratchDir;
using ::dgrid::testing::WriteFile;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

constexpr char kConfig[] = R"({
  "_class_name": "FluxTransformer2DModel",
  "num_layers": 2,
  "guidance_embeds": true,
  "axes_dims_rope": [16, 56, 56],
  "pooled_projection_dim": null,
  "shift": 1.15,
  "patch_size": 1,
  "names": ["a", "b"],
  "wrong_int": 2.5,
  "wrong_bool": "true",
  "wrong_list": [1, "x"],
  "huge": 18446744073709551615,
  "zero": 0,
  "minus": -1
})";

JsonConfig Parse() {
  absl::StatusOr<JsonConfig> config = JsonConfig::FromText(kConfig, "transformer/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

void ExpectBadKey(const absl::Status& status, const std::string& key) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("transformer/config.json"), HasSubstr("'" + key + "'")));
}

TEST(JsonConfigTest, TypedGettersAndDefaults) {
  JsonConfig config = Parse();
  EXPECT_EQ(config.source(), "transformer/config.json");
  EXPECT_EQ(*config.GetInt("num_layers", 19), 2);
  EXPECT_EQ(*config.GetInt("num_single_layers", 38), 38);        // missing -> default
  EXPECT_EQ(*config.GetInt("pooled_projection_dim", 768), 768);  // null -> default
  EXPECT_TRUE(*config.GetBool("guidance_embeds", false));
  EXPECT_DOUBLE_EQ(*config.GetDouble("shift", 1.0), 1.15);
  EXPECT_DOUBLE_EQ(*config.GetDouble("patch_size", 0.0), 1.0);  // an integer is a number
  EXPECT_EQ(*config.GetString("_class_name", ""), "FluxTransformer2DModel");
  EXPECT_THAT(*config.GetIntList("axes_dims_rope", {}), ElementsAre(16, 56, 56));
  EXPECT_THAT(*config.GetIntList("absent", {1, 2}), ElementsAre(1, 2));
  EXPECT_THAT(*config.GetStringList("names", {}), ElementsAre("a", "b"));
  EXPECT_EQ(*config.GetOptionalDouble("pooled_projection_dim"), std::nullopt);
  EXPECT_EQ(*config.GetOptionalDouble("absent"), std::nullopt);
  EXPECT_EQ(*config.GetOptionalDouble("shift"), 1.15);
  EXPECT_TRUE(config.Has("num_layers"));
  EXPECT_FALSE(config.Has("pooled_projection_dim"));
  EXPECT_FALSE(config.Has("absent"));
}

TEST(JsonConfigTest, WrongTypesNameFileAndKey) {
  JsonConfig config = Parse();
  ExpectBadKey(config.GetInt("wrong_int", 0).status(), "wrong_int");
  ExpectBadKey(config.GetInt("huge", 0).status(), "huge");
  ExpectBadKey(config.GetBool("wrong_bool", false).status(), "wrong_bool");
  ExpectBadKey(config.GetString("num_layers", "").status(), "num_layers");
  ExpectBadKey(config.GetDouble("names", 0).status(), "names");
  ExpectBadKey(config.GetIntList("wrong_list", {}).status(), "wrong_list");
  ExpectBadKey(config.GetIntList("num_layers", {}).status(), "num_layers");
  ExpectBadKey(config.GetStringList("axes_dims_rope", {}).status(), "axes_dims_rope");
  ExpectBadKey(config.GetOptionalDouble("wrong_bool").status(), "wrong_bool");
}

TEST(JsonConfigTest, RangeChecks) {
  JsonConfig config = Parse();
  EXPECT_TRUE(config.CheckPositive("num_layers", 2).ok());
  ExpectBadKey(config.CheckPositive("zero", 0), "zero");
  EXPECT_TRUE(config.CheckNonNegative("zero", 0).ok());
  ExpectBadKey(config.CheckNonNegative("minus", -1), "minus");
}

TEST(JsonConfigTest, BadFiles) {
  auto bad = JsonConfig::FromText("{\"a\": ", "x/config.json");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("x/config.json"));
  auto list = JsonConfig::FromText("[1]", "x/config.json");
  EXPECT_EQ(list.status().code(), absl::StatusCode::kInvalidArgument);
  ScratchDir dir("cfg");
  auto missing = JsonConfig::FromFile(dir / "config.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir / "config.json"));
  WriteFile(dir / "config.json", kConfig);
  auto from_file = JsonConfig::FromFile(dir / "config.json");
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->source(), dir / "config.json");
}

// model_index.json
// ---------------------------------------------------------------------------------

constexpr char kModelIndex[] = R"({
  "_class_name": "FluxPipeline",
  "_diffusers_version": "0.42.1",
  "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "transformer": ["diffusers", "FluxTransformer2DModel"],
  "image_encoder": [null, null],
  "requires_safety_checker": false
})";

void MakeModel(const std::string& root) {
  MakeDirs(root + "/transformer");
  MakeDirs(root + "/scheduler");
  WriteFile(root + "/model_index.json", kModelIndex);
}

TEST(ModelIndexTest, PlainFolder) {
  ScratchDir dir("mi");
  MakeModel(dir.path());
  absl::StatusOr<ModelIndex> index = ReadModelIndex(dir.path() + "/");
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->root, dir.path());
  EXPECT_EQ(index->pipeline_class, "FluxPipeline");
  EXPECT_THAT(index->components,
              ElementsAre(Pair("scheduler", Pair("diffusers", "FlowMatchEulerDiscreteScheduler")),
                          Pair("text_encoder", Pair("transformers", "CLIPTextModel")),
                          Pair("transformer", Pair("diffusers", "FluxTransformer2DModel"))));
  EXPECT_FALSE(index->HasComponent("image_encoder"));
  EXPECT_EQ(*index->ComponentPath("transformer"), dir / "transformer");
  // Declared but without a folder, and absent.
  auto no_folder = index->ComponentPath("text_encoder");
  EXPECT_EQ(no_folder.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_folder.status().message(), HasSubstr("text_encoder"));
  EXPECT_EQ(index->ComponentPath("image_encoder").status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelIndexTest, RelativePathBecomesAbsolute) {
  ScratchDir dir("mi");
  MakeModel(dir.path());
  char old[4096];
  ASSERT_NE(::getcwd(old, sizeof(old)), nullptr);
  ASSERT_EQ(::chdir(dir.path().c_str()), 0);
  absl::StatusOr<std::string> root = ResolveModelRoot(".");
  ASSERT_EQ(::chdir(old), 0);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(*root, dir.path());
}

// Lays out a Hugging Face cache entry whose snapshot files are symlinks into blobs/.
std::string MakeCacheEntry(const std::string& base, bool with_ref) {
  const std::string entry = base + "/models--acme--tiny-flux";
  const std::string snapshot = entry + "/snapshots/0123abcd";
  MakeDirs(entry + "/blobs");
  MakeDirs(snapshot + "/transformer");
  WriteFile(entry + "/blobs/aaaa", kModelIndex);
  EXPECT_EQ(::symlink("../../blobs/aaaa", (snapshot + "/model_index.json").c_str()), 0);
  if (with_ref) {
    MakeDirs(entry + "/refs");
    WriteFile(entry + "/refs/main", "0123abcd\n");
  }
  return entry;
}

TEST(ModelIndexTest, HuggingFaceCacheEntryAndSnapshot) {
  ScratchDir dir("mi");
  const std::string entry = MakeCacheEntry(dir.path(), /*with_ref=*/true);
  const std::string snapshot = entry + "/snapshots/0123abcd";
  absl::StatusOr<ModelIndex> index = ReadModelIndex(entry);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->root, snapshot);
  EXPECT_EQ(index->pipeline_class, "FluxPipeline");
  EXPECT_EQ(*index->ComponentPath("transformer"), snapshot + "/transformer");
  absl::StatusOr<std::string> direct = ResolveModelRoot(snapshot);
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(*direct, snapshot);
}

TEST(ModelIndexTest, CacheEntryWithoutRefUsesItsOnlySnapshot) {
  ScratchDir dir("mi");
  const std::string entry = MakeCacheEntry(dir.path(), /*with_ref=*/false);
  absl::StatusOr<std::string> root = ResolveModelRoot(entry);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(*root, entry + "/snapshots/0123abcd");
}

TEST(ModelIndexTest, RefNamingMissingSnapshot) {
  ScratchDir dir("mi");
  const std::string entry = MakeCacheEntry(dir.path(), /*with_ref=*/true);
  WriteFile(entry + "/refs/main", "feedbeef");
  absl::StatusOr<std::string> root = ResolveModelRoot(entry);
  EXPECT_EQ(root.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(root.status().message(), AllOf(HasSubstr(entry), HasSubstr("feedbeef")));
  WriteFile(entry + "/refs/main", "../../etc");
  EXPECT_EQ(ResolveModelRoot(entry).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelIndexTest, NotAModel) {
  ScratchDir dir("mi");
  absl::StatusOr<ModelIndex> index = ReadModelIndex(dir.path());
  EXPECT_EQ(index.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(index.status().message(), HasSubstr(dir.path()));
  EXPECT_EQ(ReadModelIndex(dir / "absent").status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelIndexTest, MalformedModelIndex) {
  ScratchDir dir("mi");
  WriteFile(dir / "model_index.json", R"({"transformer": ["diffusers", "X"]})");
  auto no_class = ReadModelIndex(dir.path());
  EXPECT_EQ(no_class.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_class.status().message(),
              AllOf(HasSubstr(dir / "model_index.json"), HasSubstr("_class_name")));
  WriteFile(dir / "model_index.json", R"({"_class_name": "P", "vae": ["diffusers", 3]})");
  auto bad_component = ReadModelIndex(dir.path());
  EXPECT_EQ(bad_component.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_component.status().message(),
              AllOf(HasSubstr("model_index.json"), HasSubstr("'vae'")));
  WriteFile(dir / "model_index.json", R"({"_class_name": 7})");
  auto bad_class = ReadModelIndex(dir.path());
  EXPECT_EQ(bad_class.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_class.status().message(), HasSubstr("'_class_name'"));
  WriteFile(dir / "model_index.json", "not json");
  EXPECT_EQ(ReadModelIndex(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelIndexTest, ParsesTextWithoutAFolder) {
  absl::StatusOr<ModelIndex> index = ParseModelIndex(
      R"({"_class_name": "P", "vae": ["diffusers", "V"], "opt": [null, null], "x": true})",
      "m/model_index.json");
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->pipeline_class, "P");
  EXPECT_TRUE(index->root.empty());
  EXPECT_TRUE(index->HasComponent("vae"));
  EXPECT_FALSE(index->HasComponent("opt"));
  EXPECT_FALSE(index->HasComponent("x"));
  for (absl::string_view text : {"", "[]", "{\"_class_name\": \"P\", \"vae\": [1]}", "{\"a\":"}) {
    absl::StatusOr<ModelIndex> bad = ParseModelIndex(text, "m/model_index.json");
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(bad.status().message(), HasSubstr("m/model_index.json")) << text;
  }
}

// common/files.h, which the layout code uses instead of std::filesystem.
TEST(FilesTest, PathsAndListing) {
  EXPECT_EQ(JoinPath("/a/", "b"), "/a/b");
  EXPECT_EQ(JoinPath("/a", "b"), "/a/b");
  EXPECT_EQ(JoinPath("/a", "/b"), "/b");
  EXPECT_EQ(JoinPath("", "b"), "b");
  EXPECT_EQ(AbsolutePath("/a/./b//c/../d/"), "/a/b/d");
  EXPECT_EQ(AbsolutePath("/.."), "/");
  ScratchDir dir("files");
  MakeDirs(dir / "sub");
  WriteFile(dir / "b.txt", "hello");
  WriteFile(dir / "a.txt", "");
  EXPECT_THAT(*ListDirectory(dir.path()), ElementsAre("a.txt", "b.txt", "sub"));
  EXPECT_TRUE(IsRegularFile(dir / "b.txt"));
  EXPECT_FALSE(IsRegularFile(dir / "sub"));
  EXPECT_TRUE(IsDirectory(dir / "sub"));
  EXPECT_EQ(*ReadFileToString(dir / "b.txt"), "hello");
  EXPECT_EQ(ReadFileToString(dir / "none").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ListDirectory(dir / "none").status().code(), absl::StatusCode::kNotFound);
}

TEST(FilesTest, WriteFileAtomicallyReplacesTheWholeFileAndLeavesNoTemporary) {
  ScratchDir dir("atomic");
  ASSERT_TRUE(WriteFileAtomically(dir / "ready", "a longer first text\n").ok());
  ASSERT_TRUE(WriteFileAtomically(dir / "ready", "short\n").ok());
  EXPECT_EQ(*ReadFileToString(dir / "ready"), "short\n");
  EXPECT_THAT(*ListDirectory(dir.path()), ElementsAre("ready"));
  const absl::Status missing = WriteFileAtomically(dir / "no-such-dir/ready", "x");
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_NE(missing.message().find("no-such-dir"), std::string::npos) << missing;
}

}  // namespace
}  // namespace dgrid
