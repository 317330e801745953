#include "services/denoiser/sampler.h"

#include <chrono>
#include <optional>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/DeviceAccelerator.h>
#include <c10/core/Event.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/img2img.h"
#include "services/denoiser/models/modulation_schedule.h"
#include "services/denoiser/step_cache_loop.h"

namespace dgrid {
namespace flux {

at::Tensor PackLatents(const at::Tensor& latents) {
  const int64_t b = latents.size(0), c = latents.size(1), h = latents.size(2), w = latents.size(3);
  return latents.view({b, c, h / 2, 2, w / 2, 2})
      .permute({0, 2, 4, 1, 3, 5})
      .reshape({b, (h / 2) * (w / 2), c * 4});
}

at::Tensor UnpackLatents(const at::Tensor& packed, int64_t latent_height, int64_t latent_width) {
  const int64_t b = packed.size(0), channels = packed.size(2);
  return packed.view({b, latent_height / 2, latent_width / 2, channels / 4, 2, 2})
      .permute({0, 3, 1, 4, 2, 5})
      .reshape({b, channels / 4, latent_height, latent_width});
}

at::Tensor LatentImageIds(int64_t rows, int64_t cols) {
  at::Tensor ids = at::zeros({rows, cols, 3}, at::kFloat);
  ids.select(2, 1).add_(at::arange(rows, at::kFloat).unsqueeze(1));
  ids.select(2, 2).add_(at::arange(cols, at::kFloat).unsqueeze(0));
  return ids.reshape({rows * cols, 3});
}

at::Tensor SeededNoise(at::IntArrayRef shape, uint64_t seed, at::ScalarType dtype) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(dtype).device(at::kCPU));
}

// TeaCache's rescale polynomial for FLUX (numpy.poly1d order, highest degree first), as the
// TeaCache authors fitted it on FLUX.1-dev (ali-vilab/TeaCache, TeaCache4FLUX/teacache_flux.py;
// Liu et al., arXiv:2411.19108). Cited numbers, not refitted here; every FLUX-architecture model
// uses them, the tiny test models included.
const std::vector<double>& TeaCacheRescale() {
  static const std::vector<double> coefficients = {4.98651651e+02, -2.83781631e+02, 5.58554382e+01,
                                                   -3.82021401e+00, 2.64230861e-01};
  return coefficients;
}

}  // namespace flux

namespace {

absl::Status CheckEmbeds(const at::Tensor& embeds, const at::Tensor& pooled,
                         const FluxTransformerConfig& c, absl::string_view which) {
  if (!embeds.defined() || embeds.dim() != 3 || embeds.size(0) != 1 ||
      embeds.size(2) != c.joint_attention_dim) {
    return InvalidArgument("FluxSampler: ", which, "prompt_embeds must be [1, S, ",
                           c.joint_attention_dim, "], got ",
                           embeds.defined() ? absl::StrJoin(embeds.sizes(), "x") : "none");
  }
  if (!pooled.defined() || pooled.dim() != 2 || pooled.size(0) != 1 ||
      pooled.size(1) != c.pooled_projection_dim) {
    return InvalidArgument("FluxSampler: ", which, "pooled_prompt_embeds must be [1, ",
                           c.pooled_projection_dim, "], got ",
                           pooled.defined() ? absl::StrJoin(pooled.sizes(), "x") : "none");
  }
  return absl::OkStatus();
}

// Gathers the two branches' predictions over the CFG group (rank 0: conditional, rank 1:
// unconditional) and combines them as the single-rank loop does, so every rank gets the same
// result.
absl::StatusOr<at::Tensor> CombineCfgBranches(Communicator& cfg, const at::Tensor& pred,
                                              double scale) {
  ASSIGN_OR_RETURN(auto branches, ExchangeCfgBranches(cfg, pred));
  const at::Tensor& cond = branches.first;
  const at::Tensor& uncond = branches.second;
  return TorchCall("FluxSampler true CFG", [&] { return uncond + (cond - uncond) * scale; });
}

}  // namespace

namespace {

// Device-side step timing without host waits inside the loop: events are recorded on the current
// stream right before and right after each step's work is queued; StepQueued() then waits for the
// *previous* step's end (the device is busy with the step just queued meanwhile) and returns that
// step's duration on the device's clock. Finish() waits for the last step. Work queued between two
// steps (a preempting request) is in neither step. Holds the events of two steps at most.
class StepClock {
 public:
  explicit StepClock(const c10::Device& device) : device_(device) {}

  // Before step k's work is queued.
  void StepStarts() { start_.emplace(Record()); }

  // After step k is queued: the duration of step k - 1 (nothing after step 0).
  std::optional<double> StepQueued() {
    Span span{std::move(*start_), Record()};
    start_.reset();
    std::optional<double> previous;
    if (queued_) previous = Seconds(*queued_);
    queued_.emplace(std::move(span));
    return previous;
  }

  double Finish() { return Seconds(*queued_); }

 private:
  struct Span {
    c10::Event start, end;
  };

  c10::Event Record() {
    c10::Event event(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
    event.record(at::accelerator::getCurrentStream(device_.index()));
    return event;
  }

  // Seconds of `span`, once its end has happened.
  static double Seconds(Span& span) {
    span.end.synchronize();
    return span.start.elapsedTime(span.end) / 1e3;
  }

  c10::Device device_;
  std::optional<c10::Event> start_;
  std::optional<Span> queued_;
};

}  // namespace

absl::StatusOr<at::Tensor> RunFluxSampler(const FluxTransformer2DModel& model,
                                          const FlowMatchEulerSchedulerConfig& scheduler_config,
                                          const FluxSamplerRequest& request,
                                          const FluxSamplerHooks& hooks,
                                          const SequenceParallelContext* sp) {
  const FluxTransformerConfig& c = model.config();
  if (c.patch_size != 1 || c.in_channels % 4 != 0 || c.out_channels != c.in_channels) {
    return InvalidArgument(
        "FluxSampler: model needs patch_size 1 and out_channels == in_channels "
        "divisible by 4 (got patch_size ",
        c.patch_size, ", in ", c.in_channels, ", out ", c.out_channels, ")");
  }
  if (request.vae_scale_factor < 1) {
    return InvalidArgument("FluxSampler: vae_scale_factor must be >= 1");
  }
  const int64_t unit = 2 * request.vae_scale_factor;
  if (request.height < unit || request.width < unit) {
    return InvalidArgument("FluxSampler: image ", request.width, "x", request.height,
                           " is smaller than ", unit, "x", unit);
  }
  if (request.num_inference_steps < 1) {
    return InvalidArgument("FluxSampler: num_inference_steps must be >= 1, got ",
                           request.num_inference_steps);
  }
  RETURN_IF_ERROR(CheckEmbeds(request.prompt_embeds, request.pooled_prompt_embeds, c, ""));
  const bool has_negative =
      request.negative_prompt_embeds.defined() && request.negative_pooled_prompt_embeds.defined();
  const bool true_cfg = request.true_cfg_scale > 1.0 && has_negative;
  if (true_cfg) {
    RETURN_IF_ERROR(CheckEmbeds(request.negative_prompt_embeds,
                                request.negative_pooled_prompt_embeds, c, "negative_"));
  }
  if (sp != nullptr) RETURN_IF_ERROR(sp->Validate(c.num_attention_heads));
  // CFG parallel: the two true-CFG passes run on the two CFG branches of the group.
  const bool cfg_parallel = true_cfg && sp != nullptr && sp->layout.cfg() == 2;
  const bool negative_branch = cfg_parallel && sp->layout.coords().cfg == 1;

  // Latent grid as FluxPipeline.prepare_latents computes it (floor to a multiple of 2).
  const int64_t latent_h = 2 * (request.height / unit);
  const int64_t latent_w = 2 * (request.width / unit);
  const int64_t latent_channels = c.in_channels / 4;

  FlowMatchEulerScheduler scheduler(scheduler_config);
  RETURN_IF_ERROR(
      scheduler.SetTimestepsForFlux(request.num_inference_steps, (latent_h / 2) * (latent_w / 2)));
  const bool img2img = request.image_latents.defined();
  if (img2img) {
    const at::Tensor& image = request.image_latents;
    if (image.dim() != 4 || image.size(0) != 1 || image.size(1) != latent_channels ||
        image.size(2) != latent_h || image.size(3) != latent_w) {
      return InvalidArgument("image_latents: expected [1, ", latent_channels, ", ", latent_h, ", ",
                             latent_w, "], got [", absl::StrJoin(image.sizes(), ", "), "]");
    }
    ASSIGN_OR_RETURN(int first, Img2ImgFirstStep(request.num_inference_steps, request.strength));
    RETURN_IF_ERROR(scheduler.StartAt(first));
  }

  struct Prepared {
    at::Tensor latents, img_ids, guidance;
    at::Tensor embeds, pooled, neg_embeds, neg_pooled;
    flux::Rope rope, neg_rope;
  };
  ASSIGN_OR_RETURN(
      Prepared p, TorchCall("FluxSampler prepare", [&]() -> absl::StatusOr<Prepared> {
        Prepared p;
        const at::Device device = model.options().device();
        const at::ScalarType dtype = request.prompt_embeds.scalar_type();
        const at::TensorOptions opts = at::TensorOptions().dtype(dtype).device(device);
        if (img2img) {
          ASSIGN_OR_RETURN(at::Tensor initial,
                           Img2ImgInitialLatents(request.image_latents, scheduler.sigmas()[0],
                                                 request.seed, dtype, device));
          p.latents = flux::PackLatents(initial);
        } else {
          p.latents = flux::PackLatents(
              flux::SeededNoise({1, latent_channels, latent_h, latent_w}, request.seed, dtype)
                  .to(device));
        }
        p.img_ids = flux::LatentImageIds(latent_h / 2, latent_w / 2).to(opts);
        p.embeds = request.prompt_embeds.to(device);
        p.pooled = request.pooled_prompt_embeds.to(device);
        // Text ids are all zero: text tokens get no positional rotation.
        ASSIGN_OR_RETURN(p.rope,
                         model.ComputeRope(at::zeros({p.embeds.size(1), 3}, opts), p.img_ids));
        if (true_cfg) {
          p.neg_embeds = request.negative_prompt_embeds.to(device);
          p.neg_pooled = request.negative_pooled_prompt_embeds.to(device);
          ASSIGN_OR_RETURN(
              p.neg_rope, model.ComputeRope(at::zeros({p.neg_embeds.size(1), 3}, opts), p.img_ids));
        }
        if (c.guidance_embeds) {
          p.guidance = at::full({1}, request.guidance_scale,
                                at::TensorOptions().dtype(at::kFloat).device(device));
        }
        return p;
      }));

  const int total = scheduler.num_inference_steps();
  at::Tensor latents = p.latents;
  // The modulation rows of each pass, a window of steps at a time (null: the passes compute them).
  const at::ScalarType latent_dtype = p.latents.scalar_type();
  std::unique_ptr<ModulationSchedule> modulation, neg_modulation;
  if (!negative_branch) {
    modulation = ModulationSchedule::Create(model, scheduler.timesteps(), request.guidance_scale,
                                            p.pooled, latent_dtype);
  }
  if (true_cfg) {
    neg_modulation = ModulationSchedule::Create(model, scheduler.timesteps(),
                                                request.guidance_scale, p.neg_pooled, latent_dtype);
  }
  const auto modulation_row = [&](ModulationSchedule* schedule,
                                  int step) -> absl::StatusOr<at::Tensor> {
    if (schedule == nullptr) return at::Tensor();
    return schedule->Row(step);
  };
  // Step caching (off: every Pass is null and Forward runs its uncached path).
  StepCacheLoop cache(request.cache, flux::TeaCacheRescale(), sp);
  // On a device the loop never waits for the step it has just queued: each step's end is marked by
  // an event, and step i is reported (time from the device's clock) once step i + 1 is queued, so
  // the device always has the next step's work and the host never drains it.
  std::optional<StepClock> clock;
  if (!latents.is_cpu()) clock.emplace(latents.device());
  const auto report = [&](int step, double seconds) {
    DG_LOG_DEBUG(request.request_id, "step %d/%d took %.1f ms", step + 1, total, seconds * 1e3);
    if (hooks.on_step) hooks.on_step(step, total, seconds);
  };
  for (int i = 0; i < total; ++i) {
    if (hooks.is_cancelled && hooks.is_cancelled()) {
      DG_LOG_INFO(request.request_id, "sampler cancelled before step %d/%d", i + 1, total);
      return absl::CancelledError(absl::StrCat("cancelled before step ", i + 1, " of ", total));
    }
    if (hooks.take_preempting) {
      while (std::function<void()> run_first = hooks.take_preempting()) run_first();
    }
    const auto start = std::chrono::steady_clock::now();
    if (clock) {
      RETURN_IF_ERROR(TorchCall("FluxSampler step clock", [&] { clock->StepStarts(); }));
    }
    FluxTransformerInputs in;
    in.hidden_states = latents;
    in.encoder_hidden_states = p.embeds;
    in.pooled_projections = p.pooled;
    in.img_ids = p.img_ids;
    in.guidance = p.guidance;
    ASSIGN_OR_RETURN(in.timestep, TorchCall("FluxSampler timestep", [&] {
                       // t.expand(B).to(latents.dtype) / 1000, as the pipeline feeds the model.
                       return at::full(
                                  {1}, scheduler.timesteps()[i],
                                  at::TensorOptions().dtype(at::kFloat).device(latents.device()))
                                  .to(latents.scalar_type()) /
                              1000;
                     }));
    in.rope = &p.rope;
    if (negative_branch) {
      in.encoder_hidden_states = p.neg_embeds;
      in.pooled_projections = p.neg_pooled;
      in.rope = &p.neg_rope;
    }
    ASSIGN_OR_RETURN(in.modulation,
                     modulation_row(negative_branch ? neg_modulation.get() : modulation.get(), i));
    cache.BeginStep(i, total);
    // A CFG-parallel rank of the negative branch runs only the unconditional pass.
    ASSIGN_OR_RETURN(at::Tensor noise_pred,
                     model.Forward(in, sp, cache.Pass(negative_branch ? 1 : 0)));
    if (cfg_parallel) {
      ASSIGN_OR_RETURN(noise_pred,
                       CombineCfgBranches(*sp->cfg, noise_pred, request.true_cfg_scale));
    } else if (true_cfg) {
      in.encoder_hidden_states = p.neg_embeds;
      in.pooled_projections = p.neg_pooled;
      in.rope = &p.neg_rope;
      ASSIGN_OR_RETURN(in.modulation, modulation_row(neg_modulation.get(), i));
      ASSIGN_OR_RETURN(at::Tensor neg_pred, model.Forward(in, sp, cache.Pass(1)));
      ASSIGN_OR_RETURN(noise_pred, TorchCall("FluxSampler true CFG", [&] {
                         return neg_pred + (noise_pred - neg_pred) * request.true_cfg_scale;
                       }));
    }
    if (hooks.on_preview && hooks.wants_preview && hooks.wants_preview(i)) {
      // The clean-latent estimate at this step: what the step would reach at sigma 0.
      ASSIGN_OR_RETURN(
          at::Tensor preview, TorchCall("FluxSampler preview", [&] {
            const at::Tensor x0 =
                latents.to(at::kFloat) - scheduler.sigmas()[i] * noise_pred.to(at::kFloat);
            return flux::UnpackLatents(x0.to(latents.scalar_type()), latent_h, latent_w);
          }));
      hooks.on_preview(i, preview);
    }
    if (cache.EndStep() && hooks.on_cached_step) hooks.on_cached_step(i);
    ASSIGN_OR_RETURN(latents, scheduler.Step(noise_pred, i, latents));
    if (!clock) {
      report(i, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      continue;
    }
    ASSIGN_OR_RETURN(std::optional<double> previous,
                     TorchCall("FluxSampler step clock", [&] { return clock->StepQueued(); }));
    if (previous) report(i - 1, *previous);
  }
  if (clock && total > 0) {
    ASSIGN_OR_RETURN(double last,
                     TorchCall("FluxSampler step clock", [&] { return clock->Finish(); }));
    report(total - 1, last);
  }
  if (cache.enabled()) {
    DG_LOG_INFO(request.request_id, "step cache %s: %d of %d steps skipped",
                StepCacheSpec(request.cache), cache.skipped_steps(), total);
  }
  // A NaN or Inf would decode to a black or garbled image that looks like a result: fail instead.
  // (One check per request; the latents leave the device next anyway.)
  ASSIGN_OR_RETURN(bool finite, TorchCall("FluxSampler output check", [&] {
                     return at::isfinite(latents).all().item<bool>();
                   }));
  if (!finite) {
    return Internal("the latents after ", total, " steps hold NaN or Inf values (a numeric ",
                    "overflow in the model or scheduler at ", c10::toString(latents.scalar_type()),
                    ")");
  }
  return TorchCall("FluxSampler unpack",
                   [&] { return flux::UnpackLatents(latents, latent_h, latent_w); });
}

}  // namespace dgrid
