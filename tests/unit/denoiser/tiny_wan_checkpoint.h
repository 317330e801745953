// A tiny Wan2.2 A14B pipeline folder for the tests that load a Wan model through the denoiser
// engine (step batching, model offload): the tiny experts of tests/unit/parallel/sp_tiny_wan.h.
#ifndef DGRID_TESTS_UNIT_DENOISER_TINY_WAN_CHECKPOINT_H_
#define DGRID_TESTS_UNIT_DENOISER_TINY_WAN_CHECKPOINT_H_

#include <string>

namespace dgrid::testing {

// Writes the pipeline under `root`: transformer/ and transformer_2/ (the tiny experts, float32,
// seeds 3 and 4), a UniPC scheduler (flow_shift 3), boundary_ratio 0.875, and the VAE's config
// alone (no text encoder or VAE weights: the denoiser reads the VAE's scale factors only).
void WriteTinyWanCheckpoint(const std::string& root);

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_DENOISER_TINY_WAN_CHECKPOINT_H_
