#include "services/denoiser/batched_sampler.h"

#include <chrono>
#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/family_denoiser.h"
#include "services/denoiser/img2img.h"
#include "services/denoiser/models/modulation_schedule.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/step_cache_loop.h"

namespace dgrid {

// What RunFluxSampler keeps on its stack for one request, kept here across Step() calls.
struct FluxBatchedSampler::Member {
  explicit Member(const FlowMatchEulerSchedulerConfig& config) : scheduler(config) {}
  int64_t id = 0;
  std::string request_id;
  SamplerHooks hooks;
  FlowMatchEulerScheduler scheduler;
  int step = 0;
  int total = 0;
  int64_t latent_h = 0, latent_w = 0;
  bool true_cfg = false;
  double guidance_scale = 0;
  double true_cfg_scale = 1;
  at::Tensor latents;  // [1, N, C] packed
  at::Tensor embeds, pooled, neg_embeds, neg_pooled;
  flux::Rope rope, neg_rope;
  // The request's own step cache (its config, decisions and kept tensors), as the lone loop keeps
  // it; set in AddRequest (off when the request has no caching), never shared or carried over.
  std::optional<StepCacheLoop> cache;
  // Its passes' modulation rows, as the lone loop computes them (null: the pass computes them).
  std::unique_ptr<ModulationSchedule> modulation, neg_modulation;
};

FluxBatchedSampler::FluxBatchedSampler(const FluxTransformer2DModel& model,
                                       const FlowMatchEulerSchedulerConfig& scheduler,
                                       ToRequest to_request, const SequenceParallelContext* sp)
    : model_(model), scheduler_(scheduler), to_request_(std::move(to_request)), sp_(sp) {}

FluxBatchedSampler::~FluxBatchedSampler() = default;

absl::Status FluxBatchedSampler::Add(int64_t id, const DenoiseInput& input, SamplerHooks hooks) {
  ASSIGN_OR_RETURN(FluxSamplerRequest request, to_request_(input));
  return AddRequest(id, request, std::move(hooks));
}

namespace {

absl::Status CheckEmbeddings(const at::Tensor& embeds, const at::Tensor& pooled,
                             const FluxTransformerConfig& c, absl::string_view which) {
  const bool embeds_ok = embeds.defined() && embeds.dim() == 3 && embeds.size(0) == 1 &&
                         embeds.size(2) == c.joint_attention_dim;
  const bool pooled_ok = pooled.defined() && pooled.dim() == 2 && pooled.size(0) == 1 &&
                         pooled.size(1) == c.pooled_projection_dim;
  if (embeds_ok && pooled_ok) return absl::OkStatus();
  auto shape = [](const at::Tensor& t) {
    return t.defined() ? absl::StrJoin(t.sizes(), "x") : std::string("none");
  };
  return InvalidArgument("FluxSampler: ", which, "prompt_embeds must be [1, S, ",
                         c.joint_attention_dim, "] and ", which, "pooled_prompt_embeds [1, ",
                         c.pooled_projection_dim, "], got ", shape(embeds), " and ", shape(pooled));
}

}  // namespace

absl::Status FluxBatchedSampler::AddRequest(int64_t id, const FluxSamplerRequest& request,
                                            SamplerHooks hooks) {
  const FluxTransformerConfig& c = model_.config();
  if (c.patch_size != 1 || c.in_channels % 4 != 0 || c.out_channels != c.in_channels) {
    return InvalidArgument("FluxSampler: model needs patch_size 1 and out_channels == in_channels",
                           " divisible by 4");
  }
  const int64_t unit = 2 * request.vae_scale_factor;
  if (request.vae_scale_factor < 1 || request.height < unit || request.width < unit ||
      request.num_inference_steps < 1) {
    return InvalidArgument("FluxSampler: image ", request.width, "x", request.height,
                           " (vae_scale_factor ", request.vae_scale_factor, ") or ",
                           request.num_inference_steps, " steps out of range");
  }
  RETURN_IF_ERROR(CheckEmbeddings(request.prompt_embeds, request.pooled_prompt_embeds, c, ""));
  if (sp_ != nullptr) RETURN_IF_ERROR(sp_->Validate(c.num_attention_heads));
  auto m = std::make_unique<Member>(scheduler_);
  m->id = id;
  m->request_id = request.request_id;
  m->hooks = std::move(hooks);
  m->true_cfg = request.true_cfg_scale > 1.0 && request.negative_prompt_embeds.defined() &&
                request.negative_pooled_prompt_embeds.defined();
  if (m->true_cfg) {
    RETURN_IF_ERROR(CheckEmbeddings(request.negative_prompt_embeds,
                                    request.negative_pooled_prompt_embeds, c, "negative_"));
  }
  m->guidance_scale = request.guidance_scale;
  m->true_cfg_scale = request.true_cfg_scale;
  // As RunFluxSampler: the latent grid floors to a multiple of 2.
  m->latent_h = 2 * (request.height / unit);
  m->latent_w = 2 * (request.width / unit);
  const int64_t latent_channels = c.in_channels / 4;
  RETURN_IF_ERROR(m->scheduler.SetTimestepsForFlux(request.num_inference_steps,
                                                   (m->latent_h / 2) * (m->latent_w / 2)));
  const bool img2img = request.image_latents.defined();
  if (img2img) {
    const at::Tensor& image = request.image_latents;
    if (image.dim() != 4 || image.size(0) != 1 || image.size(1) != latent_channels ||
        image.size(2) != m->latent_h || image.size(3) != m->latent_w) {
      return InvalidArgument("image_latents: expected [1, ", latent_channels, ", ", m->latent_h,
                             ", ", m->latent_w, "], got [", absl::StrJoin(image.sizes(), ", "),
                             "]");
    }
    ASSIGN_OR_RETURN(int first, Img2ImgFirstStep(request.num_inference_steps, request.strength));
    RETURN_IF_ERROR(m->scheduler.StartAt(first));
  }
  m->total = m->scheduler.num_inference_steps();
  m->cache.emplace(request.cache, flux::TeaCacheRescale(), sp_);
  RETURN_IF_ERROR(TorchCall("FluxBatchedSampler prepare", [&]() -> absl::Status {
    const at::Device device = model_.options().device();
    const at::ScalarType dtype = request.prompt_embeds.scalar_type();
    const at::TensorOptions opts = at::TensorOptions().dtype(dtype).device(device);
    if (img2img) {
      ASSIGN_OR_RETURN(at::Tensor initial,
                       Img2ImgInitialLatents(request.image_latents, m->scheduler.sigmas()[0],
                                             request.seed, dtype, device));
      m->latents = flux::PackLatents(initial);
    } else {
      m->latents = flux::PackLatents(
          flux::SeededNoise({1, latent_channels, m->latent_h, m->latent_w}, request.seed, dtype)
              .to(device));
    }
    const at::Tensor img_ids = flux::LatentImageIds(m->latent_h / 2, m->latent_w / 2).to(opts);
    m->embeds = request.prompt_embeds.to(device);
    m->pooled = request.pooled_prompt_embeds.to(device);
    ASSIGN_OR_RETURN(m->rope, model_.ComputeRope(at::zeros({m->embeds.size(1), 3}, opts), img_ids));
    if (m->true_cfg) {
      m->neg_embeds = request.negative_prompt_embeds.to(device);
      m->neg_pooled = request.negative_pooled_prompt_embeds.to(device);
      ASSIGN_OR_RETURN(m->neg_rope,
                       model_.ComputeRope(at::zeros({m->neg_embeds.size(1), 3}, opts), img_ids));
    }
    m->modulation = ModulationSchedule::Create(model_, m->scheduler.timesteps(), m->guidance_scale,
                                               m->pooled, dtype);
    if (m->true_cfg) {
      m->neg_modulation = ModulationSchedule::Create(model_, m->scheduler.timesteps(),
                                                     m->guidance_scale, m->neg_pooled, dtype);
    }
    return absl::OkStatus();
  }));
  if (!members_.empty()) {
    // What the forward concatenates must agree (the StepBatcher only mixes equal BatchKeys).
    const Member& first = *members_.front();
    auto same = [](const at::Tensor& a, const at::Tensor& b) {
      return a.defined() == b.defined() &&
             (!a.defined() || (a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type()));
    };
    if (!same(first.latents, m->latents) || !same(first.embeds, m->embeds) ||
        !same(first.neg_embeds, m->neg_embeds) || first.true_cfg != m->true_cfg) {
      return InvalidArgument("request ", request.request_id, " does not fit batch of ",
                             first.request_id, ": size, text length, dtype or CFG mode differ");
    }
  }
  members_.push_back(std::move(m));
  return absl::OkStatus();
}

void FluxBatchedSampler::End(size_t i, absl::StatusOr<at::Tensor> result,
                             std::vector<Ended>& ended) {
  ended.push_back(Ended{members_[i]->id, std::move(result)});
  members_.erase(members_.begin() + static_cast<std::ptrdiff_t>(i));
}

absl::StatusOr<at::Tensor> FluxBatchedSampler::Forward(bool negative) {
  FluxTransformerInputs in;
  std::vector<at::Tensor> hidden, embeds, pooled;
  std::vector<float> timesteps, guidance;
  for (const auto& m : members_) {
    hidden.push_back(m->latents);
    embeds.push_back(negative ? m->neg_embeds : m->embeds);
    pooled.push_back(negative ? m->neg_pooled : m->pooled);
    timesteps.push_back(m->scheduler.timesteps()[m->step]);
    guidance.push_back(static_cast<float>(m->guidance_scale));
  }
  const Member& first = *members_.front();
  RETURN_IF_ERROR(TorchCall("FluxBatchedSampler inputs", [&] {
    const at::Device device = first.latents.device();
    const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
    in.hidden_states = at::cat(hidden);
    in.encoder_hidden_states = at::cat(embeds);
    in.pooled_projections = at::cat(pooled);
    // As the lone loop: t (float32) cast to the latents' dtype, then / 1000; one value per member.
    in.timestep = at::tensor(timesteps, f32).to(device).to(first.latents.scalar_type()) / 1000;
    if (model_.config().guidance_embeds) in.guidance = at::tensor(guidance, f32).to(device);
  }));
  in.rope = negative ? &first.neg_rope : &first.rope;
  // The members' modulation rows when every member has them (members of one batch share the
  // model, so they all do or none does).
  std::vector<at::Tensor> rows;
  for (const auto& m : members_) {
    ModulationSchedule* schedule = negative ? m->neg_modulation.get() : m->modulation.get();
    if (schedule == nullptr) break;
    ASSIGN_OR_RETURN(at::Tensor row, schedule->Row(m->step));
    rows.push_back(std::move(row));
  }
  if (rows.size() == members_.size()) {
    ASSIGN_OR_RETURN(in.modulation, TorchCall("FluxBatchedSampler modulation", [&] {
                       return rows.size() == 1 ? rows.front() : at::cat(rows);
                     }));
  }
  // Each member's cache for this pass (the unconditional pass follows its conditional one's
  // decision, StepCacheLoop); without any, the uncached forward as before.
  std::vector<StepCacheStep*> caches;
  bool any_cache = false;
  for (const auto& m : members_) {
    caches.push_back(m->cache->Pass(negative ? 1 : 0));
    any_cache = any_cache || caches.back() != nullptr;
  }
  if (!any_cache) return model_.Forward(in, sp_);
  return model_.ForwardCachedRows(in, caches, sp_);
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> FluxBatchedSampler::Predict() {
  if (!members_.front()->true_cfg) {
    ASSIGN_OR_RETURN(at::Tensor pred, Forward(/*negative=*/false));
    return std::make_pair(std::move(pred), at::Tensor());
  }
  if (sp_ != nullptr && sp_->layout.cfg() == 2) {
    // CFG parallel, as the lone loop: this branch's pass only, then both branches' predictions.
    ASSIGN_OR_RETURN(at::Tensor mine, Forward(/*negative=*/sp_->layout.coords().cfg == 1));
    return ExchangeCfgBranches(*sp_->cfg, mine);
  }
  ASSIGN_OR_RETURN(at::Tensor pred, Forward(/*negative=*/false));
  ASSIGN_OR_RETURN(at::Tensor neg_pred, Forward(/*negative=*/true));
  return std::make_pair(std::move(pred), std::move(neg_pred));
}

std::vector<BatchedSampler::Ended> FluxBatchedSampler::Step() {
  std::vector<Ended> ended;
  // Cancellation first, per member, as the lone loop asks before every step.
  for (size_t i = 0; i < members_.size();) {
    Member& m = *members_[i];
    if (!m.hooks.is_cancelled) {
      ++i;
      continue;
    }
    absl::StatusOr<bool> stop = TorchCall(m.request_id, [&] { return m.hooks.is_cancelled(); });
    if (stop.ok() && !*stop) {
      ++i;
      continue;
    }
    if (stop.ok()) {
      DG_LOG_INFO(m.request_id, "sampler cancelled before step %d/%d (batched)", m.step + 1,
                  m.total);
      stop =
          absl::CancelledError(absl::StrCat("cancelled before step ", m.step + 1, " of ", m.total));
    }
    End(i, stop.status(), ended);
  }
  if (members_.empty()) return ended;
  const auto start = std::chrono::steady_clock::now();
  for (const auto& m : members_) m->cache->BeginStep(m->step, m->total);
  // (conditional, unconditional or undefined without true CFG).
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> pred = Predict();
  if (!pred.ok()) {
    DG_LOG_ERROR("", "batched forward of %d requests failed: %s", members_.size(),
                 pred.status().ToString());
    while (!members_.empty()) End(members_.size() - 1, pred.status(), ended);
    return ended;
  }
  // Per member, exactly the lone loop's arithmetic on its own slice.
  std::vector<bool> failed(members_.size(), false);
  for (size_t b = 0; b < members_.size(); ++b) {
    Member& m = *members_[b];
    // One TorchCall around the member's work and hooks: what throws ends this member only.
    const absl::Status status = TorchCall(m.request_id, [&]() -> absl::Status {
      at::Tensor noise_pred = pred->first.narrow(0, static_cast<int64_t>(b), 1);
      if (m.true_cfg) {
        const at::Tensor neg = pred->second.narrow(0, static_cast<int64_t>(b), 1);
        noise_pred = neg + (noise_pred - neg) * m.true_cfg_scale;
      }
      if (m.hooks.on_preview && m.hooks.wants_preview && m.hooks.wants_preview(m.step)) {
        // The clean-latent estimate at this step, as the lone loop computes it.
        const at::Tensor x0 =
            m.latents.to(at::kFloat) - m.scheduler.sigmas()[m.step] * noise_pred.to(at::kFloat);
        m.hooks.on_preview(
            m.step, flux::UnpackLatents(x0.to(m.latents.scalar_type()), m.latent_h, m.latent_w));
      }
      if (m.cache->EndStep() && m.hooks.on_cached_step) m.hooks.on_cached_step(m.step);
      ASSIGN_OR_RETURN(m.latents, m.scheduler.Step(noise_pred, m.step, m.latents));
      return absl::OkStatus();
    });
    if (!status.ok()) {
      failed[b] = true;
      ended.push_back(Ended{m.id, status});
    }
  }
  if (!members_.front()->latents.is_cpu()) {
    // Honest step times on a device: wait for the step (the lone loop overlaps this instead).
    const absl::Status sync = TorchCall("FluxBatchedSampler sync", [&] {
      at::accelerator::synchronizeDevice(members_.front()->latents.device().index());
    });
    if (!sync.ok()) DG_LOG_WARN("", "batched step: device sync failed: %s", sync.ToString());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::vector<std::unique_ptr<Member>> kept;
  for (size_t b = 0; b < members_.size(); ++b) {
    if (failed[b]) continue;
    Member& m = *members_[b];
    const int step = m.step++;
    DG_LOG_DEBUG(m.request_id, "step %d/%d took %.1f ms (batch of %d)", step + 1, m.total,
                 seconds * 1e3, members_.size());
    if (m.hooks.on_step) {
      const absl::Status reported =
          TorchCall(m.request_id, [&] { m.hooks.on_step(step, m.total, seconds); });
      if (!reported.ok()) {
        ended.push_back(Ended{m.id, reported});
        continue;
      }
    }
    if (m.step < m.total) {
      kept.push_back(std::move(members_[b]));
      continue;
    }
    if (m.cache->enabled()) {
      DG_LOG_INFO(m.request_id, "step cache %s: %d of %d steps skipped (batched)",
                  StepCacheSpec(m.cache->config()), m.cache->skipped_steps(), m.total);
    }
    // The lone loop's end: a NaN or Inf fails the request instead of drawing garbage.
    absl::StatusOr<at::Tensor> result =
        TorchCall("FluxBatchedSampler output", [&]() -> absl::StatusOr<at::Tensor> {
          if (!at::isfinite(m.latents).all().item<bool>()) {
            return Internal("the latents after ", m.total, " steps hold NaN or Inf values (a ",
                            "numeric overflow in the model or scheduler at ",
                            c10::toString(m.latents.scalar_type()), ")");
          }
          return flux::UnpackLatents(m.latents, m.latent_h, m.latent_w);
        });
    ended.push_back(Ended{m.id, std::move(result)});
  }
  members_ = std::move(kept);
  return ended;
}

absl::Status CheckMemberBeforeStep(const SamplerHooks& hooks, const std::string& request_id,
                                   const char* family, int step, int total) {
  if (!hooks.is_cancelled) return absl::OkStatus();
  ASSIGN_OR_RETURN(bool stop, TorchCall(request_id, [&] { return hooks.is_cancelled(); }));
  if (!stop) return absl::OkStatus();
  DG_LOG_INFO(request_id, "%s sampler cancelled before step %d/%d (batched)", family, step + 1,
              total);
  return absl::CancelledError(absl::StrCat("cancelled before step ", step + 1, " of ", total));
}

}  // namespace dgrid
