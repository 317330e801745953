// The only dgrid translation unit that includes spdlog (see logging.h for why).
#include "common/logging.h"

#include <atomic>
#include <memory>
#include <string_view>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"

namespace dgrid {
namespace {

struct LoggerState {
  absl::Mutex mutex;
  LoggingOptions options ABSL_GUARDED_BY(mutex);
  std::shared_ptr<spdlog::logger> logger ABSL_GUARDED_BY(mutex);
  // The prefix "[stage rN" is rebuilt only when options change.
  std::string prefix ABSL_GUARDED_BY(mutex);
  std::atomic<int> level{static_cast<int>(LogLevel::kInfo)};
};

LoggerState& State() {
  static LoggerState* state = [] {
    auto* s = new LoggerState();
    absl::MutexLock lock(&s->mutex);
    s->logger = std::make_shared<spdlog::logger>("dgrid",
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
    s->logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %L %v");
    s->logger->set_level(spdlog::level::trace);
    s->prefix = "[dgrid";
    return s;
  }();
  return *state;
}

spdlog::level::level_enum ToSpd(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
      return spdlog::level::trace;
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
    case LogLevel::kOff:
      return spdlog::level::off;
  }
  return spdlog::level::info;
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "trace") return LogLevel::kTrace;
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warn" || lower == "warning") return LogLevel::kWarn;
  if (lower == "error") return LogLevel::kError;
  if (lower == "off") return LogLevel::kOff;
  return InvalidArgument("log level '", name,
                         "' is not one of trace, debug, info, warn, error, off");
}

absl::Status InitLogging(const LoggingOptions& options) {
  std::vector<spdlog::sink_ptr> sinks;
  sinks.push_back(std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (!options.file.empty()) {
    try {
      sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(options.file));
    } catch (const spdlog::spdlog_ex& e) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot open log file '", options.file, "': ", e.what()));
    }
  }
  auto logger = std::make_shared<spdlog::logger>("dgrid", sinks.begin(), sinks.end());
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %L %v");
  logger->set_level(spdlog::level::trace);
  logger->flush_on(spdlog::level::warn);

  LoggerState& state = State();
  absl::MutexLock lock(&state.mutex);
  if (state.logger) state.logger->flush();
  state.options = options;
  state.logger = std::move(logger);
  state.prefix = options.rank >= 0 ? absl::StrCat("[", options.stage, " r", options.rank)
                                   : absl::StrCat("[", options.stage);
  state.level.store(static_cast<int>(options.level), std::memory_order_relaxed);
  return absl::OkStatus();
}

LoggingOptions CurrentLoggingOptions() {
  LoggerState& state = State();
  absl::MutexLock lock(&state.mutex);
  return state.options;
}

bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= State().level.load(std::memory_order_relaxed) &&
         level != LogLevel::kOff;
}

void WriteLog(LogLevel level, absl::string_view request_id, absl::string_view message) {
  LoggerState& state = State();
  absl::MutexLock lock(&state.mutex);
  // fmt knows std::string_view, not absl's.
  const std::string_view text(message.data(), message.size());
  if (request_id.empty()) {
    state.logger->log(ToSpd(level), "{}] {}", state.prefix, text);
  } else {
    state.logger->log(ToSpd(level), "{} req={}] {}", state.prefix,
                      std::string_view(request_id.data(), request_id.size()), text);
  }
}

void FlushLogs() {
  LoggerState& state = State();
  absl::MutexLock lock(&state.mutex);
  state.logger->flush();
}

}  // namespace dgrid
