#include "orchestrator/api/api_keys.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"

namespace dgrid::orchestrator {
namespace {

// Compares without an early exit so that the time taken does not tell how much of a key matched.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::FromFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat("api_keys_file: cannot read ", path));
  }
  std::vector<std::string> keys;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    keys.emplace_back(line);
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("api_keys_file: no key in ", path));
  }
  return ApiKeys(std::move(keys));
}

absl::Status ApiKeys::Check(absl::string_view authorization) const {
  if (keys_.empty()) return absl::OkStatus();
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return absl::UnauthenticatedError("missing API key (authorization: Bearer <key>)");
  }
  const absl::string_view presented =
      absl::StripAsciiWhitespace(authorization.substr(kBearer.size()));
  bool match = false;
  for (const std::string& key : keys_) match |= ConstantTimeEquals(presented, key);
  if (!match) return absl::UnauthenticatedError("invalid API key");
  return absl::OkStatus();
}

absl::Status ApiKeys::CheckCall(const grpc::ServerContextBase& context) const {
  if (keys_.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return Check("");
  return Check(absl::string_view(it->second.data(), it->second.size()));
}

}  // namespace dgrid::orchestrator
