#include "services/denoiser/wan_batched_sampler.h"

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>

#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/step_cache_loop.h"

namespace dgrid {

// What RunWanSampler keeps on its stack for one request, kept here across Step() calls.
struct WanBatchedSampler::Member {
  explicit Member(WanSamplerState s) : state(std::move(s)) {}
  int64_t id = 0;
  std::string request_id;
  SamplerHooks hooks;
  WanSamplerState state;
  int step = 0;
  // The request's own step cache (its config, decisions and kept tensors), as RunWanSampler keeps
  // it; off when the request has no caching, never shared or carried over.
  std::optional<StepCacheLoop> cache;
  // Whether the cache's tensors come from the first expert (A14B: a switch drops them, as alone).
  bool cached_first_expert = true;
};

WanBatchedSampler::WanBatchedSampler(const WanTransformer3DModel& transformer,
                                     const WanTransformer3DModel* transformer_2,
                                     const WanPipelineConfig& pipeline,
                                     const WanSchedulerConfig& scheduler, ToRequest to_request,
                                     const SequenceParallelContext* sp)
    : WanBatchedSampler(WanExperts::Resident(transformer, transformer_2), pipeline, scheduler,
                        std::move(to_request), sp) {}

WanBatchedSampler::WanBatchedSampler(WanExperts experts, const WanPipelineConfig& pipeline,
                                     const WanSchedulerConfig& scheduler, ToRequest to_request,
                                     const SequenceParallelContext* sp)
    : experts_(std::move(experts)),
      pipeline_(pipeline),
      scheduler_(scheduler),
      to_request_(std::move(to_request)),
      sp_(sp) {}

WanBatchedSampler::~WanBatchedSampler() = default;

absl::Status WanBatchedSampler::Add(int64_t id, const DenoiseInput& input, SamplerHooks hooks) {
  ASSIGN_OR_RETURN(WanSamplerRequest request, to_request_(input));
  return AddRequest(id, request, std::move(hooks));
}

absl::Status WanBatchedSampler::AddRequest(int64_t id, const WanSamplerRequest& request,
                                           SamplerHooks hooks) {
  ASSIGN_OR_RETURN(WanSamplerState state,
                   WanSamplerState::Prepare(experts_, pipeline_, scheduler_, request, sp_));
  if (!members_.empty()) {
    // What the forward concatenates must agree (the StepBatcher only mixes equal BatchKeys).
    const Member& first = *members_.front();
    auto same = [](const at::Tensor& a, const at::Tensor& b) {
      return a.defined() == b.defined() &&
             (!a.defined() || (a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type()));
    };
    if (!same(first.state.latents(), state.latents()) ||
        !same(first.state.embeds(), state.embeds()) ||
        !same(first.state.negative_embeds(), state.negative_embeds()) ||
        first.state.cfg() != state.cfg()) {
      return InvalidArgument("request ", request.request_id, " does not fit batch of ",
                             first.request_id, ": size, frames, text length or CFG mode differ");
    }
  }
  auto m = std::make_unique<Member>(std::move(state));
  m->id = id;
  m->request_id = request.request_id;
  m->hooks = std::move(hooks);
  m->cache.emplace(request.cache, /*rescale=*/std::vector<double>(), sp_);  // as RunWanSampler
  members_.push_back(std::move(m));
  return absl::OkStatus();
}

void WanBatchedSampler::End(size_t i, absl::StatusOr<at::Tensor> result,
                            std::vector<Ended>& ended) {
  ended.push_back(Ended{members_[i]->id, std::move(result)});
  members_.erase(members_.begin() + static_cast<std::ptrdiff_t>(i));
}

absl::StatusOr<const WanTransformer3DModel*> WanBatchedSampler::Hold(int expert) {
  std::shared_ptr<const WanTransformer3DModel>& held = held_[expert];
  if (held == nullptr) {
    ASSIGN_OR_RETURN(held, experts_.use(expert == 0));
  }
  return held.get();
}

absl::StatusOr<WanBatchedSampler::Predictions> WanBatchedSampler::Forward(
    const WanTransformer3DModel& model, const std::vector<size_t>& group) {
  const bool cfg = members_[group.front()]->state.cfg();  // equal over the batch (AddRequest)
  // CFG parallel, as the lone loop: this rank's CFG branch runs the batch's conditional pass
  // (coordinate 0) or its unconditional one (coordinate 1), and the two are exchanged.
  const bool cfg_parallel = cfg && sp_ != nullptr && sp_->layout.cfg() == 2;
  const bool negative_branch = cfg_parallel && sp_->layout.coords().cfg == 1;
  std::vector<at::Tensor> hidden, timesteps, embeds, negative;
  for (size_t b : group) {
    const Member& m = *members_[b];
    ASSIGN_OR_RETURN(WanTransformerInputs row, m.state.Inputs(m.step, negative_branch));
    hidden.push_back(row.hidden_states);
    timesteps.push_back(row.timestep);
    embeds.push_back(row.encoder_hidden_states);
    if (cfg && !cfg_parallel) negative.push_back(m.state.negative_embeds());
  }
  const auto rows = static_cast<int64_t>(group.size());
  // As the lone loop with DGRID_WAN_CFG_BATCH (CUDA only): both passes in one forward, each
  // member's pair of rows (prompt, negative prompt) as its lone pair, one member after another.
  const bool pair = cfg && sp_ == nullptr && UseWanCfgBatch(model.options().device()) &&
                    embeds.front().size(1) == negative.front().size(1);
  WanTransformerInputs in;
  RETURN_IF_ERROR(TorchCall("WanBatchedSampler inputs", [&] {
    if (pair) {
      std::vector<at::Tensor> text;
      for (int64_t k = 0; k < rows; ++k) {
        text.push_back(embeds[static_cast<size_t>(k)]);
        text.push_back(negative[static_cast<size_t>(k)]);
      }
      in.hidden_states = at::cat(hidden).repeat_interleave(2, 0);
      in.timestep = at::cat(timesteps).repeat_interleave(2, 0);
      in.encoder_hidden_states = at::cat(text);
    } else {
      in.hidden_states = at::cat(hidden);
      in.timestep = at::cat(timesteps);
      in.encoder_hidden_states = at::cat(embeds);
    }
  }));
  // One forward of the group with each member's step cache for pass `pass` (0: conditional, 1:
  // unconditional; with the pair, pass 0 covers both rows, as alone); the uncached forward when
  // no member caches.
  const auto forward = [&](int pass) -> absl::StatusOr<at::Tensor> {
    std::vector<StepCacheStep*> caches;
    bool any = false;
    for (size_t b : group) {
      caches.push_back(members_[b]->cache->Pass(pass));
      any = any || caches.back() != nullptr;
    }
    if (!any) return model.Forward(in, sp_);
    return model.ForwardCachedRows(in, caches, sp_);
  };
  ASSIGN_OR_RETURN(at::Tensor out, forward(negative_branch ? 1 : 0));
  at::Tensor uncond_out;
  if (pair) {
    RETURN_IF_ERROR(TorchCall("WanBatchedSampler outputs", [&] {
      const at::Tensor pairs = out.unflatten(0, {rows, 2});
      uncond_out = pairs.select(1, 1);
      out = pairs.select(1, 0);
    }));
  } else if (cfg_parallel) {
    ASSIGN_OR_RETURN(auto branches, ExchangeCfgBranches(*sp_->cfg, out));
    out = branches.first;
    uncond_out = branches.second;
  } else if (cfg) {
    ASSIGN_OR_RETURN(in.encoder_hidden_states,
                     TorchCall("WanBatchedSampler inputs", [&] { return at::cat(negative); }));
    ASSIGN_OR_RETURN(uncond_out, forward(1));
  }
  Predictions p;
  for (int64_t k = 0; k < rows; ++k) {
    p.cond.push_back(out.narrow(0, k, 1));
    if (cfg) p.uncond.push_back(uncond_out.narrow(0, k, 1));
  }
  return p;
}

std::vector<BatchedSampler::Ended> WanBatchedSampler::Step() {
  std::vector<Ended> ended;
  // Cancellation first, per member, as the lone loop asks before every step.
  for (size_t i = 0; i < members_.size();) {
    const Member& m = *members_[i];
    absl::Status go_on =
        CheckMemberBeforeStep(m.hooks, m.request_id, "Wan", m.step, m.state.total());
    if (go_on.ok()) {
      ++i;
    } else {
      End(i, std::move(go_on), ended);
    }
  }
  if (members_.empty()) {
    for (auto& held : held_) held.reset();  // nothing left to step
    return ended;
  }
  const auto start = std::chrono::steady_clock::now();
  // Wan2.2 A14B: each member's own timestep picks its expert; one forward (pair) per expert.
  std::vector<size_t> first_expert, second_expert;
  for (size_t b = 0; b < members_.size(); ++b) {
    Member& m = *members_[b];
    const bool first = m.state.FirstExpert(m.step);
    (first ? first_expert : second_expert).push_back(b);
    // As alone: a switch of experts drops the other expert's residuals; then the step's rules.
    if (first != m.cached_first_expert) m.cache->Invalidate();
    m.cached_first_expert = first;
    m.cache->BeginStep(m.step, m.state.total());
  }
  // Only the experts this step uses stay held; one it does not use goes before another comes.
  if (first_expert.empty()) held_[0].reset();
  if (second_expert.empty()) held_[1].reset();
  std::vector<absl::Status> failed(members_.size());
  std::vector<at::Tensor> cond(members_.size()), uncond(members_.size());
  // In a group a failed forward ends the step: running the other expert's forward would enter its
  // collectives while a rank that failed before its own may not (mismatched collectives), so
  // every member of the step ends with that failure.
  absl::Status group_failure;
  for (const auto& [expert, group] :
       {std::pair<int, const std::vector<size_t>*>{0, &first_expert}, {1, &second_expert}}) {
    if (group->empty()) continue;
    if (!group_failure.ok()) {
      for (const size_t b : *group) failed[b] = group_failure;
      continue;
    }
    absl::StatusOr<Predictions> p = [&]() -> absl::StatusOr<Predictions> {
      ASSIGN_OR_RETURN(const WanTransformer3DModel* model, Hold(expert));
      return Forward(*model, *group);
    }();
    if (!p.ok() && sp_ != nullptr) {
      group_failure = p.status();
      for (size_t b = 0; b < members_.size(); ++b) failed[b] = group_failure;
    }
    if (!p.ok()) {
      DG_LOG_ERROR("", "batched Wan forward of %d requests failed: %s", group->size(),
                   p.status().ToString());
    }
    for (size_t k = 0; k < group->size(); ++k) {
      const size_t b = (*group)[k];
      if (!p.ok()) {
        failed[b] = p.status();
        continue;
      }
      cond[b] = p->cond[k];
      if (!p->uncond.empty()) uncond[b] = p->uncond[k];
    }
  }
  // Per member, exactly the lone loop's arithmetic on its own rows.
  for (size_t b = 0; b < members_.size(); ++b) {
    if (!failed[b].ok()) continue;
    Member& m = *members_[b];
    failed[b] = TorchCall(m.request_id, [&]() -> absl::Status {
      at::Tensor noise_pred = cond[b];
      if (m.state.cfg()) {
        ASSIGN_OR_RETURN(noise_pred, m.state.Guide(m.step, cond[b], uncond[b]));
      }
      if (m.cache->EndStep() && m.hooks.on_cached_step) m.hooks.on_cached_step(m.step);
      return m.state.Advance(m.step, noise_pred);
    });
  }
  if (!members_.front()->state.latents().is_cpu()) {
    // Honest step times on a device: wait for the step (the lone loop overlaps this instead).
    const absl::Status sync = TorchCall("WanBatchedSampler sync", [&] {
      at::accelerator::synchronizeDevice(members_.front()->state.latents().device().index());
    });
    if (!sync.ok()) DG_LOG_WARN("", "batched Wan step: device sync failed: %s", sync.ToString());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::vector<std::unique_ptr<Member>> kept;
  for (size_t b = 0; b < members_.size(); ++b) {
    Member& m = *members_[b];
    if (!failed[b].ok()) {
      ended.push_back(Ended{m.id, failed[b]});
      continue;
    }
    const int step = m.step++;
    const int total = m.state.total();
    DG_LOG_DEBUG(m.request_id, "step %d/%d took %.1f ms (Wan batch of %d)", step + 1, total,
                 seconds * 1e3, members_.size());
    if (m.hooks.on_step) {
      const absl::Status reported =
          TorchCall(m.request_id, [&] { m.hooks.on_step(step, total, seconds); });
      if (!reported.ok()) {
        ended.push_back(Ended{m.id, reported});
        continue;
      }
    }
    if (m.step < total) {
      kept.push_back(std::move(members_[b]));
      continue;
    }
    if (m.cache->enabled()) {
      DG_LOG_INFO(m.request_id, "step cache %s: %d of %d steps skipped (batched)",
                  StepCacheSpec(m.cache->config()), m.cache->skipped_steps(), total);
    }
    // The lone loop's end: float32 latents, and a NaN or Inf fails the request.
    absl::StatusOr<at::Tensor> result = m.state.Finish();
    if (result.ok()) {
      DG_LOG_DEBUG(m.request_id, "Wan sampler: %d steps (batched), latents %s", total,
                   absl::StrJoin(result->sizes(), "x"));
    }
    ended.push_back(Ended{m.id, std::move(result)});
  }
  members_ = std::move(kept);
  // An emptied batch holds nothing. Otherwise an expert stays until a step that does not use it
  // (a member that joins meanwhile may need it: no second copy).
  if (members_.empty()) {
    for (auto& held : held_) held.reset();
  }
  return ended;
}

}  // namespace dgrid
