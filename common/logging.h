// Logging for every dgrid process.
//
// Each line carries the process's stage and rank (set once at start-up) and, where the caller has
// one, the request id:   2026-11-27 21:40:01.123 I [denoiser r1 req=7f3a] step 3/28 took 104.2 ms
//
// The back end is spdlog, but this header does not include it: LibTorch ships its own fmt, which
// clashes with the fmt spdlog was built against, so spdlog is kept inside logging.cc alone.
// Messages are formatted with absl::StrFormat (printf-style, checked at compile time).
//
// Thread safety: every function may be called from any thread after InitLogging.
#ifndef DGRID_COMMON_LOGGING_H_
#define DGRID_COMMON_LOGGING_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"

namespace dgrid {

enum class LogLevel { kTrace = 0, kDebug = 1, kInfo = 2, kWarn = 3, kError = 4, kOff = 5 };

// Parses "trace", "debug", "info", "warn", "error" or "off" (case-insensitive).
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);

struct LoggingOptions {
  // Stage shown on every line ("encoder", "denoiser", "decoder", "orchestrator", "cli", ...).
  std::string stage = "dgrid";
  // Rank inside a denoiser group; < 0 omits it.
  int rank = -1;
  LogLevel level = LogLevel::kInfo;
  // When not empty, lines also go to this file (appended). Created if missing.
  std::string file;
};

// Configures the process-wide logger. May be called again (e.g. once the rank is known); the last
// call wins. Before the first call, lines go to stderr at level info with stage "dgrid".
absl::Status InitLogging(const LoggingOptions& options);

// Current process-wide options.
LoggingOptions CurrentLoggingOptions();

// Whether a line at `level` would be written. Cheap; use it to skip formatting on hot paths.
bool LogEnabled(LogLevel level);

// Writes one line. `request_id` may be empty. Prefer the DG_LOG macros.
void WriteLog(LogLevel level, absl::string_view request_id, absl::string_view message);

// Flushes buffered lines (call before exiting).
void FlushLogs();

}  // namespace dgrid

// DG_LOG(kInfo, request_id, "format %d", args...). `request_id` is any string-like value ("" for
// none).
#define DG_LOG(level, request_id, ...)                                                         \
  do {                                                                                         \
    if (::dgrid::LogEnabled(::dgrid::LogLevel::level)) {                                       \
      ::dgrid::WriteLog(::dgrid::LogLevel::level, (request_id), absl::StrFormat(__VA_ARGS__)); \
    }                                                                                          \
  } while (false)

#define DG_LOG_TRACE(request_id, ...) DG_LOG(kTrace, request_id, __VA_ARGS__)
#define DG_LOG_DEBUG(request_id, ...) DG_LOG(kDebug, request_id, __VA_ARGS__)
#define DG_LOG_INFO(request_id, ...) DG_LOG(kInfo, request_id, __VA_ARGS__)
#define DG_LOG_WARN(request_id, ...) DG_LOG(kWarn, request_id, __VA_ARGS__)
#define DG_LOG_ERROR(request_id, ...) DG_LOG(kError, request_id, __VA_ARGS__)

#endif  // DGRID_COMMON_LOGGING_H_
