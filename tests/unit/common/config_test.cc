#include "common/config.h"

#include <unistd.h>

#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dgrid {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

Config MakeConfig() {
  return Config({{"port", Setting::kInt, "50051", "gRPC port", 1, 65535},
                 {"model", Setting::kString, "", "model folder"},
                 {"guidance", Setting::kDouble, "3.5", "guidance", 0, 100},
                 {"use-ucx", Setting::kBool, "true", "use UCX"}});
}

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path =
      std::string(::testing::TempDir()) + "/" + name + "_" + std::to_string(getpid());
  std::ofstream(path) << text;
  return path;
}

TEST(Config, DefaultsApply) {
  Config c = MakeConfig();
  EXPECT_EQ(*c.GetInt("port"), 50051);
  EXPECT_EQ(*c.GetString("model"), "");
  EXPECT_DOUBLE_EQ(*c.GetDouble("guidance"), 3.5);
  EXPECT_TRUE(*c.GetBool("use_ucx"));
}

TEST(Config, FlagsInAllSpellings) {
  Config c = MakeConfig();
  ASSERT_TRUE(c.ParseArgs({"serve", "--port=7000", "--model", "/m", "--no-use-ucx", "extra", "--",
                           "--port=1"})
                  .ok());
  EXPECT_EQ(*c.GetInt("port"), 7000);
  EXPECT_EQ(*c.GetString("model"), "/m");
  EXPECT_FALSE(*c.GetBool("use-ucx"));
  EXPECT_THAT(c.positional(), ElementsAre("serve", "extra", "--port=1"));
}

TEST(Config, WasSetTellsAGivenValueFromADefault) {
  Config c = MakeConfig();
  ASSERT_TRUE(c.ParseArgs({"--model=", "--no-use-ucx"}).ok());
  EXPECT_TRUE(c.WasSet("model"));  // given, and empty
  EXPECT_EQ(*c.GetString("model"), "");
  EXPECT_TRUE(c.WasSet("use-ucx"));
  EXPECT_FALSE(c.WasSet("port"));
  EXPECT_FALSE(c.WasSet("guidance"));
  const std::string path = WriteTemp("given.json", R"({"guidance": 2})");
  Config f = MakeConfig();
  ASSERT_TRUE(f.ParseArgs({"--config", path}).ok());
  EXPECT_TRUE(f.WasSet("guidance"));
  EXPECT_FALSE(f.WasSet("model"));
}

TEST(Config, FileThenFlagsWin) {
  const std::string path =
      WriteTemp("cfg.json", R"({"port": 9000, "model": "/f", "use_ucx": false})");
  Config c = MakeConfig();
  ASSERT_TRUE(c.ParseArgs({"--model=/flag", "--config", path}).ok());
  EXPECT_EQ(*c.GetInt("port"), 9000);         // from the file
  EXPECT_EQ(*c.GetString("model"), "/flag");  // the flag wins even though it came first
  EXPECT_FALSE(*c.GetBool("use_ucx"));
}

TEST(Config, BadInputGivesClearErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string expected;
  };
  const std::string bad_json = WriteTemp("bad.json", "{\"port\": 80,");
  const std::string not_object = WriteTemp("arr.json", "[1, 2]");
  const std::string unknown_key = WriteTemp("unknown.json", R"({"prot": 80})");
  const std::string wrong_type = WriteTemp("type.json", R"({"port": "eighty"})");
  const std::string out_of_range = WriteTemp("range.json", R"({"port": 70000})");
  const std::vector<Case> cases = {
      {{"--port=abc"}, "'port' must be an integer, got 'abc'"},
      {{"--port=0"}, "outside [1, 65535]"},
      {{"--guidance=nan"}, "finite number"},
      {{"--use-ucx=maybe"}, "true or false"},
      {{"--bogus=1"}, "unknown flag '--bogus'"},
      {{"--port"}, "needs a value"},
      {{"--config=/no/such/file.json"}, "cannot open config file '/no/such/file.json'"},
      {{"--config", bad_json}, "not valid JSON"},
      {{"--config", not_object}, "must be a JSON object"},
      {{"--config", unknown_key}, "unknown setting 'prot'"},
      {{"--config", wrong_type}, "'port' must be of type integer"},
      {{"--config", out_of_range}, "outside [1, 65535]"},
  };
  for (const Case& c : cases) {
    Config config = MakeConfig();
    const absl::Status s = config.ParseArgs(c.args);
    EXPECT_FALSE(s.ok()) << c.args[0];
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expected)) << c.args[0];
  }
}

TEST(Config, WrongTypeReadIsAnError) {
  Config c = MakeConfig();
  EXPECT_EQ(c.GetString("port").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.GetInt("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(Config, HelpIsReported) {
  Config c = MakeConfig();
  ASSERT_TRUE(c.ParseArgs({"--help"}).ok());
  EXPECT_TRUE(c.help_requested());
  EXPECT_THAT(c.Usage(), HasSubstr("--use-ucx (boolean, default 'true')"));
}

}  // namespace
}  // namespace dgrid
