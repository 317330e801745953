#include "common/dit_offload_flags.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid {
namespace {

constexpr char kPrefetchWithModel[] =
    "--dit-offload-prefetch: only with --dit-offload layerwise; --dit-offload model copies the "
    "whole DiT when a request starts denoising, no blocks ahead (leave the flag out)";

}  // namespace

int64_t DitOffload::PrefetchDepth(int64_t num_blocks) const {
  if (num_blocks <= 0) return 0;
  int64_t depth = prefetch_count;
  if (prefetch_fraction > 0) {
    // The tolerance keeps 0.3 * 10 (3.0000000000000004 in binary) at 3 blocks.
    depth = static_cast<int64_t>(std::ceil(prefetch_fraction * num_blocks - 1e-9));
  }
  return std::clamp<int64_t>(depth, 1, num_blocks);
}

absl::StatusOr<DitOffload> ParseDitOffload(absl::string_view mode, absl::string_view prefetch) {
  DitOffload out;
  mode = absl::StripAsciiWhitespace(mode);
  if (mode == "layerwise") {
    out.layerwise = true;
  } else if (mode == "model") {
    out.model = true;
  } else if (mode != "none" && !mode.empty()) {
    return InvalidArgument("--dit-offload: '", mode, "' must be none, layerwise or model");
  }
  prefetch = absl::StripAsciiWhitespace(prefetch);
  if (out.model && prefetch != "1" && !prefetch.empty()) {
    return InvalidArgument(kPrefetchWithModel);
  }
  out.prefetch_text = std::string(prefetch);
  const bool fraction = absl::StrContains(prefetch, '.') || absl::StrContains(prefetch, 'e') ||
                        absl::StrContains(prefetch, 'E');
  if (fraction) {
    double f = 0;
    if (!absl::SimpleAtod(prefetch, &f) || !std::isfinite(f)) {
      return InvalidArgument("--dit-offload-prefetch: '", prefetch,
                             "' is not a count of blocks (>= 1) or a fraction of them in (0, 1]");
    }
    if (!(f > 0 && f <= 1)) {
      return InvalidArgument("--dit-offload-prefetch: the fraction ", prefetch,
                             " of the blocks is outside (0, 1]");
    }
    out.prefetch_fraction = f;
    out.prefetch_count = 0;
    return out;
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(prefetch, &n)) {
    return InvalidArgument("--dit-offload-prefetch: '", prefetch,
                           "' is not a count of blocks (>= 1) or a fraction of them in (0, 1]");
  }
  if (n < 1) {
    return InvalidArgument("--dit-offload-prefetch: ", n,
                           " blocks; prefetch at least 1 block (or give a fraction in (0, 1])");
  }
  out.prefetch_count = n;
  return out;
}

std::vector<Setting> DitOffloadSettings(absl::string_view who) {
  return {
      {"dit_offload", Setting::kString, "none",
       absl::StrCat(who,
                    ": none; layerwise (FLUX, Wan): the DiT blocks' weights stay in pinned host "
                    "memory and each block is copied to the GPU just ahead of its use; or model "
                    "(FLUX, Wan): the whole DiT rests in pinned host memory and is copied to the "
                    "GPU while requests denoise")},
      {"dit_offload_prefetch", Setting::kString, "1",
       absl::StrCat(who,
                    ": with --dit-offload layerwise, the blocks being copied ahead of the running "
                    "one: a count (>= 1, e.g. 2) or a fraction of the blocks (e.g. 0.25, 1.0: "
                    "all)")},
  };
}

absl::StatusOr<DitOffload> ReadDitOffloadFlags(const Config& config) {
  ASSIGN_OR_RETURN(const std::string mode, config.GetString("dit_offload"));
  ASSIGN_OR_RETURN(const std::string prefetch, config.GetString("dit_offload_prefetch"));
  ASSIGN_OR_RETURN(DitOffload offload, ParseDitOffload(mode, prefetch));
  if (offload.model && config.WasSet("dit_offload_prefetch")) {
    return InvalidArgument(kPrefetchWithModel);
  }
  return offload;
}

std::vector<std::string> DitOffloadArgs(const DitOffload& offload) {
  if (offload.model) return {"--dit-offload", "model"};
  if (!offload.layerwise) return {};
  return {"--dit-offload", "layerwise", "--dit-offload-prefetch", offload.prefetch_text};
}

}  // namespace dgrid
