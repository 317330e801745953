// Sharded DiT weights in a denoiser group (issue #20 item 2): --dit-shard-weights and
// --dit-shard-prefetch, declared once for the processes that take them: dgrid-denoiser
// (common/stage_main.cc; a group's leader and peers) and `dgrid up` (passed on to the ranks of its
// denoiser groups). The mechanism is in services/denoiser/models/sharded_blocks.h; FLUX and Wan
// have it (another family refuses it).
//
// No LibTorch here: LoadOptions (common/safetensors.h) carries a DitShard. Plain values and
// functions; thread-compatible.
#ifndef DGRID_COMMON_DIT_SHARD_FLAGS_H_
#define DGRID_COMMON_DIT_SHARD_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/config.h"
#include "common/dit_offload_flags.h"

namespace dgrid {

// What --dit-shard-weights / --dit-shard-prefetch ask for, and the group they shard over. The
// default is no sharding.
struct DitShard {
  // --dit-shard-weights: every rank of the denoiser group keeps 1/size of each transformer
  // block's weights and the group all-gathers a block just before it runs.
  bool weights = false;
  // --dit-shard-prefetch: how many blocks after the running one are gathered ahead (>= 1).
  int64_t prefetch = 1;
  // The group: this process's rank and the group's size. Not flags of their own: the denoiser
  // group stage fills them from its group flags (services/denoiser/server/group_stage.cc) before
  // the model loads. size 1 (a process alone) cannot shard.
  int rank = 0;
  int size = 1;
};

// Parses the flags' values: `weights` "true" / "false" (or empty: false), `prefetch` a count of
// blocks. INVALID_ARGUMENT naming the flag for another `weights`, a prefetch that is not an
// integer >= 1, or sharding together with layerwise or model offload (`offload`): each would move
// the blocks' weights its own way, and offload already keeps them off the GPU.
absl::StatusOr<DitShard> ParseDitShard(absl::string_view weights, absl::string_view prefetch,
                                       const DitOffload& offload);

// INVALID_ARGUMENT naming --dit-shard-weights when `shard` asks for sharding in a group of fewer
// than two ranks (group_size); OK otherwise (also when sharding is off).
absl::Status CheckDitShardGroup(const DitShard& shard, int group_size);

// dit_shard_weights and dit_shard_prefetch, their help starting with `who` ("denoiser").
std::vector<Setting> DitShardSettings(absl::string_view who);
// Reads and checks them (ParseDitShard) against the offload flags already read.
absl::StatusOr<DitShard> ReadDitShardFlags(const Config& config, const DitOffload& offload);
// The flags that give `shard` to a dgrid-denoiser; empty without sharding. The boolean is written
// "--dit-shard-weights=true" so that a parser that takes "--name value" pairs reads it right.
std::vector<std::string> DitShardArgs(const DitShard& shard);

}  // namespace dgrid

#endif  // DGRID_COMMON_DIT_SHARD_FLAGS_H_
