// Step-level batching's inner loop: one batch of a family's requests advanced one sampler step at a
// time, with one transformer forward per step for the whole batch (issue #21 item 1). The threads,
// the waiting and the joining at step boundaries live in the StepBatcher (step_batcher.h); this is
// the arithmetic, free of threads, so tests drive it step by step.
//
// Every member keeps what it would keep alone: its own scheduler (so its own step count and
// schedule), latents, step index, hooks (progress, cancellation, previews, skipped steps) and step
// cache (step_cache_loop.h: its settings, decisions and kept tensors, nothing shared between
// members or carried across requests). Members differ in prompt, seed, steps, guidance, strength,
// deadline and step cache (none, fbcache or teacache, any settings); what must be equal is what
// the forward concatenates along the batch (the family's BatchKey, family_denoiser.h: size,
// frames, text lengths, CFG mode, dtype).
//
// Thread safety: none; one thread (a StepBatcher lane) owns a batch. Hooks run on that thread.
#ifndef DGRID_SERVICES_DENOISER_BATCHED_SAMPLER_H_
#define DGRID_SERVICES_DENOISER_BATCHED_SAMPLER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/sampler_hooks.h"
#include "services/denoiser/schedulers/flow_match_euler.h"

namespace dgrid {

struct DenoiseInput;  // family_denoiser.h

class BatchedSampler {
 public:
  // A member that left the batch in Step(): its final latents (as the family's Run returns them),
  // or why it stopped.
  struct Ended {
    int64_t id = 0;
    absl::StatusOr<at::Tensor> result;
  };

  virtual ~BatchedSampler() = default;

  // Prepares `input` as member `id` (ids unique within the batch); it runs its first step in the
  // next Step(). `hooks` are kept and called as the family's own loop would call them, except
  // take_preempting (preemption is the batch's owner's business, step_batcher.h). Errors: what the
  // family's Run would answer for this request before its first step (INVALID_ARGUMENT for bad
  // shapes, ...); the batch is unchanged then.
  virtual absl::Status Add(int64_t id, const DenoiseInput& input, SamplerHooks hooks) = 0;

  // One step of every member: each member's is_cancelled is asked first (a member that says stop,
  // or whose hook throws, ends with CANCELLED or the thrown error); the others run one batched
  // forward, then each its own scheduler step, preview and on_step. Members whose last step that
  // was end with their latents (or INTERNAL for NaN / Inf, as alone). A failing forward ends every
  // member that took part in it with its error. Returns the members that ended, which are no
  // longer in the batch.
  virtual std::vector<Ended> Step() = 0;

  virtual int size() const = 0;
};

// FLUX's batch (FluxDenoiser::NewBatch): the RunFluxSampler loop (sampler.h) run for several
// requests at once. The forward gets hidden states, text embeddings and pooled embeddings
// concatenated along the batch, and the timestep and guidance as [B] tensors, one value per member;
// true CFG runs a second batched forward with the negative embeddings and combines per member.
// Everything else (noise, schedule, Euler step, preview, finiteness check) is per member, with the
// same operations as RunFluxSampler, so a member's latents differ from its lone run only by how the
// model's kernels round a batch of B against a batch of 1 (equal on the tiny CPU models' tests
// within 1e-5, tests/unit/denoiser/batched_sampler_test.cc).
//
// Step caching: each member's StepCacheLoop decides for that member alone, on its own signal, as
// in the lone loop; the forward takes one cache per row (FluxTransformer2DModel::
// ForwardCachedRows): a teacache member that skips a step runs no block, an fbcache member that
// skips runs block 0 only, the blocks run once for the rows left, and when no member runs a block
// none runs. With true CFG a member's unconditional pass follows its conditional pass's decision.
// A member reports its skipped steps (on_cached_step) as alone; without any cached member the
// forward is the uncached one, as before. A decision that rounding could flip (a change within
// rounding of the threshold) may differ from the lone run's. On a device, each step waits for the
// device before reporting its time (the lone loop's overlap of step reports is not kept).
//
// Denoiser groups (`sp` set): one rank's side of a group's batch. Every rank of the group holds
// the same members (the leader's DenoiserGroup tells the peers, group_protocol.h kBatchStep) and
// calls Add and Step alike; the batched forward is sequence-parallel as the lone loop's with `sp`
// (each rank its shard of every member's text and image tokens), and with true CFG on a CFG2
// layout the conditional branch runs the batch's conditional pass and the other branch its
// unconditional pass, the two predictions exchanged over the CFG group (ExchangeCfgBranches) and
// combined per member. Step caching runs per member as in one process, each member's decision
// summed over the group (StepCacheLoop with `sp`), so every rank skips the same steps. A failed
// collective ends every member with its code (DEADLINE_EXCEEDED, UNAVAILABLE).
class FluxBatchedSampler final : public BatchedSampler {
 public:
  // `model` and `scheduler` (and `sp`, when set) must outlive the batch; `to_request` turns a
  // DenoiseInput into the lone loop's request (FluxDenoiser's own conversion). `sp` null: one
  // process.
  using ToRequest = std::function<absl::StatusOr<FluxSamplerRequest>(const DenoiseInput&)>;
  FluxBatchedSampler(const FluxTransformer2DModel& model,
                     const FlowMatchEulerSchedulerConfig& scheduler, ToRequest to_request,
                     const SequenceParallelContext* sp = nullptr);
  ~FluxBatchedSampler() override;

  absl::Status Add(int64_t id, const DenoiseInput& input, SamplerHooks hooks) override;
  // The same, from the lone loop's request (tests; Add converts and calls this).
  absl::Status AddRequest(int64_t id, const FluxSamplerRequest& request, SamplerHooks hooks);
  std::vector<Ended> Step() override;
  int size() const override { return static_cast<int>(members_.size()); }

 private:
  struct Member;
  // Ends members_[i] (erased) with `result`.
  void End(size_t i, absl::StatusOr<at::Tensor> result, std::vector<Ended>& ended);
  // Forward for every member (negative: their negative embeddings). [B, N, C].
  // Each member's step cache takes part (FluxTransformer2DModel::ForwardCachedRows).
  absl::StatusOr<at::Tensor> Forward(bool negative);
  // The step's noise predictions [B, N, C], true CFG combined per member (on a CFG2 group, each
  // branch runs its pass and the two are exchanged).
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> Predict();

  const FluxTransformer2DModel& model_;
  const FlowMatchEulerSchedulerConfig& scheduler_;
  ToRequest to_request_;
  const SequenceParallelContext* sp_;
  std::vector<std::unique_ptr<Member>> members_;
};

// What a batch asks of a member before its step `step` (0-based) of `total`, as the lone loops ask
// is_cancelled: OK to go on (also when there is no hook); CANCELLED (logged) when the hook says
// stop; what the hook threw, as a status, when it throws. `family` names the loop in the log line.
absl::Status CheckMemberBeforeStep(const SamplerHooks& hooks, const std::string& request_id,
                                   const char* family, int step, int total);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_BATCHED_SAMPLER_H_
