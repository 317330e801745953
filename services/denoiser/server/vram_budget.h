// A dgrid-denoiser's --vram-budget (issue #20 item 5): before the model loads, the planner's memory
// model (planner/memory_model.h, planner/dit_settings.h) predicts one rank's peak for the model's
// largest request (its maximum size and frames, with CFG) under the DiT flags given
// (--dit-precision, --dit-offload, --dit-offload-prefetch, --dit-shard-weights,
// --dit-shard-prefetch) on the process's layout (--ulysses, --ring, --cfg). A model that does not
// fit ends the process with RESOURCE_EXHAUSTED saying what was predicted and which settings would
// fit that budget (the planner's own choice, its flags and the alternatives), rather than loading
// and failing at its first large request. `dgrid up
// --vram-budget` makes the same choice before it starts anything (and applies it); this check is
// for a denoiser started on its own, as a Kubernetes pod is.
//
// Predictions, not measurements (their sources are in the memory and cost models), for bf16 (or
// FP8) weights as the planner counts them: a --dtype float32 deployment needs about twice the
// weights this predicts. Sharded weights are counted by the planner's formula (the non-block
// weights, this rank's shards and prefetch + 1 gathered blocks, planner/memory_model.h), the one
// `dgrid plan` and `dgrid up` use.
#ifndef DGRID_SERVICES_DENOISER_SERVER_VRAM_BUDGET_H_
#define DGRID_SERVICES_DENOISER_SERVER_VRAM_BUDGET_H_

#include "absl/status/status.h"
#include "common/stage_main.h"
#include "services/denoiser/group/denoiser_group.h"

namespace dgrid {

// OK when options.vram_budget is empty, or the model fits it with the given flags on `group`'s
// layout. INVALID_ARGUMENT naming --vram-budget for a malformed size; RESOURCE_EXHAUSTED as above;
// the planner's errors for a model it cannot read (naming the model folder).
absl::Status CheckDenoiserVramBudget(const StageOptions& options, const GroupFlags& group);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_SERVER_VRAM_BUDGET_H_
