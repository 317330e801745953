#include "common/dit_shard_flags.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid {

absl::StatusOr<DitShard> ParseDitShard(absl::string_view weights, absl::string_view prefetch,
                                       const DitOffload& offload) {
  DitShard out;
  weights = absl::StripAsciiWhitespace(weights);
  if (weights == "true" || weights == "1") {
    out.weights = true;
  } else if (weights != "false" && weights != "0" && !weights.empty()) {
    return InvalidArgument("--dit-shard-weights: '", weights, "' must be true or false");
  }
  prefetch = absl::StripAsciiWhitespace(prefetch);
  int64_t n = 0;
  if (!absl::SimpleAtoi(prefetch, &n)) {
    return InvalidArgument("--dit-shard-prefetch: '", prefetch,
                           "' is not a count of blocks (an integer >= 1)");
  }
  if (n < 1) {
    return InvalidArgument("--dit-shard-prefetch: ", n,
                           " blocks; gather at least the next block ahead (1)");
  }
  out.prefetch = n;
  if (out.weights && offload.layerwise) {
    return InvalidArgument(
        "--dit-shard-weights: not combined with --dit-offload layerwise (each moves the blocks' "
        "weights its own way); choose one");
  }
  if (out.weights && offload.model) {
    return InvalidArgument(
        "--dit-shard-weights: not combined with --dit-offload model (sharding keeps 1/N of the "
        "blocks on each GPU for good, model offload copies the whole DiT in per request); choose "
        "one");
  }
  return out;
}

absl::Status CheckDitShardGroup(const DitShard& shard, int group_size) {
  if (!shard.weights || group_size >= 2) return absl::OkStatus();
  return InvalidArgument(
      "--dit-shard-weights: shards the blocks over the ranks of a denoiser "
      "group, and this one has ",
      group_size,
      " rank; use a group of 2 or more (--ulysses / --ring / --cfg) or leave "
      "the flag off");
}

std::vector<Setting> DitShardSettings(absl::string_view who) {
  return {
      {"dit_shard_weights", Setting::kBool, "false",
       absl::StrCat(who,
                    ": each of a denoiser group's N ranks keeps 1/N of every DiT block's weights "
                    "(FLUX, Wan) and the group all-gathers a block just before it runs")},
      {"dit_shard_prefetch", Setting::kString, "1",
       absl::StrCat(who,
                    ": with --dit-shard-weights, the blocks gathered ahead of the running one "
                    "(>= 1)")},
  };
}

absl::StatusOr<DitShard> ReadDitShardFlags(const Config& config, const DitOffload& offload) {
  ASSIGN_OR_RETURN(const bool weights, config.GetBool("dit_shard_weights"));
  ASSIGN_OR_RETURN(const std::string prefetch, config.GetString("dit_shard_prefetch"));
  return ParseDitShard(weights ? "true" : "false", prefetch, offload);
}

std::vector<std::string> DitShardArgs(const DitShard& shard) {
  if (!shard.weights) return {};
  return {"--dit-shard-weights=true", "--dit-shard-prefetch", std::to_string(shard.prefetch)};
}

}  // namespace dgrid
