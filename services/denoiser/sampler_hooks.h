// What a sampling loop reports to, and asks of, the one running it: progress, cancellation and
// step-level preemption. Every family's loop takes these (sampler.h, wan_sampler.h via
// family_denoiser.h).
#ifndef DGRID_SERVICES_DENOISER_SAMPLER_HOOKS_H_
#define DGRID_SERVICES_DENOISER_SAMPLER_HOOKS_H_

#include <functional>

namespace at {
class Tensor;
}

namespace dgrid {

struct SamplerHooks {
  // After each step: step index (0-based), number of steps, seconds of the step. On a CPU (and in
  // the Wan loop everywhere), called right after the step with its wall time; in the FLUX loop on
  // a GPU the loop does not wait for the step it has just queued: step i is reported once step
  // i + 1 is queued (the last after the loop), with its time on the device's clock. May be empty.
  std::function<void(int step, int total, double seconds)> on_step;
  // Polled before each step; returning true stops the loop with CANCELLED. May be empty.
  std::function<bool()> is_cancelled;
  // Step-level preemption: asked before each step (after is_cancelled) for work to run first; the
  // loop runs what it gets on the calling thread and asks again until it gets an empty function,
  // then goes on with its own step. Everything the loop holds stays as it was. May be empty.
  std::function<std::function<void()>()> take_preempting;
  // Previews (image families; the Wan loop ignores them): after step `step` (0-based) for which
  // wants_preview says so, on_preview gets the loop's estimate of the clean latents at that step
  // (flow matching: x0 = x_t - sigma_t * v), unpacked and shaped as the final latents, on the
  // model's device. Called on the loop's thread, before that step's on_step. May be empty.
  std::function<bool(int step)> wants_preview;
  std::function<void(int step, const at::Tensor& latents)> on_preview;
  // Step caching (a request's StepCacheConfig): called for a step (0-based) that reused the cache
  // instead of running the whole transformer, on the loop's thread, before that step's on_step.
  // May be empty.
  std::function<void(int step)> on_cached_step;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_SAMPLER_HOOKS_H_
