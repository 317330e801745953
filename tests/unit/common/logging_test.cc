#include "common/logging.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dgrid {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string TempPath(const char* name) {
  return std::string(::testing::TempDir()) + "/" + name + "_" + std::to_string(getpid());
}

TEST(ParseLogLevel, AcceptsNamesCaseInsensitively) {
  EXPECT_EQ(*ParseLogLevel("INFO"), LogLevel::kInfo);
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarn);
  EXPECT_EQ(*ParseLogLevel("off"), LogLevel::kOff);
  const auto bad = ParseLogLevel("verbose");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("verbose"));
}

TEST(Logging, LinesCarryStageRankAndRequestId) {
  const std::string path = TempPath("dgrid_log");
  LoggingOptions options;
  options.stage = "denoiser";
  options.rank = 3;
  options.level = LogLevel::kDebug;
  options.file = path;
  ASSERT_TRUE(InitLogging(options).ok());
  DG_LOG_INFO("req-42", "step %d/%d took %.1f ms", 3, 28, 104.25);
  DG_LOG_WARN("", "no request here");
  DG_LOG_TRACE("req-42", "below the level, not written");
  FlushLogs();
  const std::string text = ReadFile(path);
  EXPECT_THAT(text, HasSubstr("[denoiser r3 req=req-42] step 3/28 took 104.2 ms"));
  EXPECT_THAT(text, HasSubstr("[denoiser r3] no request here"));
  EXPECT_THAT(text, Not(HasSubstr("below the level")));
  EXPECT_FALSE(LogEnabled(LogLevel::kTrace));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
  EXPECT_EQ(CurrentLoggingOptions().stage, "denoiser");
  std::remove(path.c_str());
}

TEST(Logging, UnwritableFileIsAnError) {
  // A regular file where a folder should be: no process can create the log there.
  const std::string blocker = TempPath("dgrid_log_blocker");
  std::ofstream(blocker) << "x";
  LoggingOptions options;
  options.file = blocker + "/log.txt";
  const absl::Status s = InitLogging(options);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr(options.file));
  std::remove(blocker.c_str());
}

}  // namespace
}  // namespace dgrid
