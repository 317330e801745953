// Wan's batch (step-level batching, --max-batch; batched_sampler.h says what a batch is and
// step_batcher.h how the engine runs one): the RunWanSampler loop (wan_sampler.h) run for several
// Wan2.1 / Wan2.2 text-to-video requests at once, one transformer forward per step for the whole
// batch instead of one per request.
//
// Every member keeps what it keeps alone, in its own WanSamplerState: its scheduler (UniPC or
// flow-match Euler, with its own step count and schedule), step index, seeded latents, prompt and
// negative prompt, and guidance (Wan2.2 A14B: guidance_scale for the high-noise expert,
// guidance_scale_2 for the low-noise one); and its hooks: is_cancelled before each of its steps,
// on_step after each (with the batched step's time). The forward gets the members' latents, text
// embeddings and timesteps ([B], or [B, tokens] with TI2V's expand_timesteps) concatenated along
// the batch; with classifier-free guidance the negative prompts run as a second batched forward
// (with DGRID_WAN_CFG_BATCH on CUDA, as the lone loop: one forward of 2B rows, each member's
// prompt row then its negative prompt row), and each member combines its own rows with its own
// scale. What must be equal is what the forward concatenates (WanDenoiser's BatchKey: size,
// frames, text lengths, CFG mode). Everything else (the noise, the schedule, the scheduler step,
// the guidance combine, the step cache, the final NaN / Inf check) is the lone loop's own code
// per member, so a member's latents differ from its lone run only by how the model's kernels
// round a batch of B against a batch of 1 (within 1e-5 of the largest latent on the tiny CPU
// models, tests/unit/denoiser/wan_batched_sampler_test.cc).
//
// Wan2.2 A14B: a member's step runs the expert its own timestep picks (timestep >= boundary_ratio
// x T: transformer, else transformer_2). Members at different points of their schedules may need
// different experts at the same step; the step then runs one forward (pair, with CFG) per expert,
// each over that expert's members.
//
// The experts come from WanExperts::use (wan_sampler.h) as the steps need them: during a step the
// batch holds exactly the experts that step's members use (one is asked for when a step first
// needs it; one that a step does not use is let go at that step's start, before another is asked
// for), and a batch whose members all ended holds nothing. Between steps an expert stays, so that
// a member joining on it finds it there. With --dit-offload model on A14B a batch whose members
// are all on one expert has that one on the device only; members on both hold both while both are
// used. A failed `use` (RESOURCE_EXHAUSTED when the device has no room) ends that expert's members
// with its status, as a failed forward does (in a group: every member of the step).
//
// Step caching: each member keeps its own StepCacheLoop (step_cache_loop.h: its settings,
// decisions and kept tensors; nothing shared between members or carried across requests) and
// steps it as RunWanSampler does: the conditional pass decides and the unconditional one follows
// (with the CUDA pair, one decision over both rows, as alone), and on A14B a member's switch of
// experts drops its cache. The forward takes one cache per member
// (WanTransformer3DModel::ForwardCachedRows): a teacache member that skips a step runs no block,
// an fbcache member that skips runs block 0 only, the blocks run once for the members left, and
// when no member runs a block none runs; without any cached member the forward is the uncached
// one. A member reports its skipped steps (on_cached_step) as alone. A decision that rounding
// could flip (a change within rounding of the threshold) may differ from the lone run's.
//
// Not batched (WanDenoiser gives these no BatchKey, so they run alone): anything the lone loop
// refuses (no input image: Wan's denoiser is text-to-video only). The Wan loop has no previews, so
// neither has its batch.
//
// Denoiser groups (`sp` set): one rank's side of a group's batch. Every rank of the group holds
// the same members (the leader's DenoiserGroup tells the peers, group_protocol.h kBatchStep) and
// calls Add and Step alike; every forward gets the context, as RunWanSampler's (each rank its
// shard of every member's text and image tokens, Ulysses and Ring), and with classifier-free
// guidance on a CFG2 layout the conditional branch runs the batch's conditional pass and the other
// branch its unconditional pass, the two predictions exchanged over the CFG group
// (ExchangeCfgBranches) and combined per member with its own scale. Step caching runs per member
// as in one process, each member's change summed over the group and the conditional branch's
// given to the other (StepCacheLoop with `sp`), so every rank makes the leader's decisions and
// skips the same steps. A failed collective ends every member of that forward with its code
// (DEADLINE_EXCEEDED, UNAVAILABLE).
//
// Thread safety: none; one thread (a StepBatcher lane) owns a batch. Hooks run on that thread.
#ifndef DGRID_SERVICES_DENOISER_WAN_BATCHED_SAMPLER_H_
#define DGRID_SERVICES_DENOISER_WAN_BATCHED_SAMPLER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/wan_sampler.h"

namespace dgrid {

class WanBatchedSampler final : public BatchedSampler {
 public:
  // The configs (and what `experts.use` reaches) must outlive the batch (a second expert exactly
  // with pipeline.boundary_ratio, as RunWanSampler); `to_request` turns a DenoiseInput into the
  // lone loop's request (WanDenoiser's own conversion). `sp`: see the file comment.
  using ToRequest = std::function<absl::StatusOr<WanSamplerRequest>(const DenoiseInput&)>;
  WanBatchedSampler(WanExperts experts, const WanPipelineConfig& pipeline,
                    const WanSchedulerConfig& scheduler, ToRequest to_request,
                    const SequenceParallelContext* sp = nullptr);
  // Over resident models (WanExperts::Resident), which must outlive the batch.
  WanBatchedSampler(const WanTransformer3DModel& transformer,
                    const WanTransformer3DModel* transformer_2, const WanPipelineConfig& pipeline,
                    const WanSchedulerConfig& scheduler, ToRequest to_request,
                    const SequenceParallelContext* sp = nullptr);
  ~WanBatchedSampler() override;

  absl::Status Add(int64_t id, const DenoiseInput& input, SamplerHooks hooks) override;
  // The same, from the lone loop's request (tests; Add converts and calls this). Errors: what
  // RunWanSampler answers before its first step, INVALID_ARGUMENT for a request whose shapes or CFG
  // mode differ from the batch's.
  absl::Status AddRequest(int64_t id, const WanSamplerRequest& request, SamplerHooks hooks);
  std::vector<Ended> Step() override;
  int size() const override { return static_cast<int>(members_.size()); }

 private:
  struct Member;
  // Ends members_[i] (erased) with `result`.
  void End(size_t i, absl::StatusOr<at::Tensor> result, std::vector<Ended>& ended);
  // One expert's forward(s) at this step for `group` (members' indices): each member's
  // conditional prediction and, with CFG, its unconditional one, [1, C, F, H, W] each.
  struct Predictions {
    std::vector<at::Tensor> cond, uncond;
  };
  absl::StatusOr<Predictions> Forward(const WanTransformer3DModel& model,
                                      const std::vector<size_t>& group);
  // The expert (0: transformer, 1: transformer_2), asked for unless held.
  absl::StatusOr<const WanTransformer3DModel*> Hold(int expert);

  WanExperts experts_;
  // The experts held for the steps (null: not held), see the file comment. Declared before
  // members_, so that a destroyed batch drops its members' tensors before the weights.
  std::shared_ptr<const WanTransformer3DModel> held_[2];
  const WanPipelineConfig& pipeline_;
  const WanSchedulerConfig& scheduler_;
  ToRequest to_request_;
  // Passed to every forward; null in one process (see the file comment).
  const SequenceParallelContext* sp_;
  std::vector<std::unique_ptr<Member>> members_;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_WAN_BATCHED_SAMPLER_H_
