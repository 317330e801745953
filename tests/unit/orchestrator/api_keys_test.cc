#include "orchestrator/api/api_keys.h"

#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

namespace dgrid::orchestrator {
namespace {

TEST(ApiKeys, NoKeysLetsEveryoneIn) {
  ApiKeys keys;
  EXPECT_FALSE(keys.enabled());
  EXPECT_TRUE(keys.Check("").ok());
}

TEST(ApiKeys, BearerKeyMustMatch) {
  ApiKeys keys({"k1", "second-key"});
  EXPECT_TRUE(keys.Check("Bearer k1").ok());
  EXPECT_TRUE(keys.Check("bearer second-key").ok());
  EXPECT_EQ(keys.Check("").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(keys.Check("k1").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(keys.Check("Bearer k").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(keys.Check("Bearer k12").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(keys.Check("Basic azE=").code(), absl::StatusCode::kUnauthenticated);
}

TEST(ApiKeys, FileSkipsCommentsAndBlankLines) {
  const std::string path =
      std::string(::testing::TempDir()) + "/api_keys_" + std::to_string(getpid());
  std::ofstream(path) << "# keys\n\n  alpha  \nbeta\n";
  absl::StatusOr<ApiKeys> keys = ApiKeys::FromFile(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_TRUE(keys->Check("Bearer alpha").ok());
  EXPECT_TRUE(keys->Check("Bearer beta").ok());
  EXPECT_FALSE(keys->Check("Bearer # keys").ok());
  std::ofstream(path) << "# only a comment\n";
  EXPECT_EQ(ApiKeys::FromFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiKeys::FromFile(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace dgrid::orchestrator
