// Predicted peak GPU memory of the encoder stage (a family's text encoders) and the decoder stage
// (the VAE decode of the largest output), beside the denoiser's (planner/memory_model.h): `dgrid
// plan` prints a line per stage and, where every component shares one GPU (`dgrid generate
// --local`, `dgrid up` on one GPU), counts them with the denoiser's.
//
//   encoder peak = sum of the text encoders' weights (parameters x bytes of the stage's dtype)
//                  + the largest encoder's activations for `tokens` tokens:
//                    2 x heads x tokens^2 x 4 bytes (fp32 attention scores and probabilities)
//                    + 3 x tokens x ffn x bytes (a gated feed-forward's two inputs and product)
//   decoder peak = the VAE decoder's weights + the decode's live tensors
//                    live planes x H x W x bytes + 2 x 3 x frames x H x W x bytes (the output)
//                  where a plane is one channel of one frame at full resolution, H x W the output
//                  (a tile's when --vae-tiling tiles it, plus the decoded tiles kept for blending,
//                  3 x frames x H x W x bytes / 0.75^2), and the output counted twice for the
//                  decoded frames and their concatenation.
//
// The live planes are counted from the decoders' code, not measured (C++ temporaries live to the
// end of their full expression):
//   AutoencoderKL (FLUX): the first residual block at full resolution holds its input, its
//     GroupNorm output and that output's SiLU (3 x 256 channels) when conv1 writes its 128: 896
//     (services/decoder/models/vae_blocks.cc ResnetBlock2D::Forward; its upsampler before holds
//     less, 256 / 4 + 2 x 256);
//   AutoencoderKLWan (Wan2.1): a chunk of 4 frames of 96 channels at full resolution; a residual
//     block's conv1 holds the input and its SiLU (4 frames each), the cached frames it keeps (2),
//     the previous chunk's (2), their padded concatenation with the input (6) and its output (4):
//     22 frames x 96 = 2112 (autoencoder_kl_wan.cc ApplyResidual, CachedConv, Causal).
// The AutoencoderKL count is checked on the CPU (tests/unit/planner/
// stage_memory_calibration_test.cc): the tiny pipeline's VAE decoding 512 x 512 in float32 peaks
// at exactly its 3 x 16 + 8 = 56 live planes plus LibTorch's native convolution's im2col columns
// (9 x 16 planes), measured through c10's CPU allocator reporting. Not counted: the convolution's
// workspace on the GPU (cuDNN's, from the caching allocator; no im2col) and the mid block's
// attention (at 1/8 of the resolution). The Wan count is not checked (no tiny Wan VAE in the
// unit tests' reach), and no committed report measures a GPU VAE or text encoder peak
// (bench/results has the denoiser's only): the GPU numbers are the formulas, not fits, and
// docs/placement.md says so.
//
// Weights are the parameter counts of the families' released configurations (diffusers'
// text_encoder / text_encoder_2 / vae config.json of FLUX.1-dev and Wan2.1), counted as the stage
// code builds the layers (services/encoder, services/decoder/models); biases and norm scales are
// left out (under 0.1%).
//
// Placement: each component is on the GPU, on the CPU, or offloaded (ComponentPlacement, the
// stage's device as common/component_flags.h places it; kOffload is `--text-encoder-device
// offload` / `--vae-device offload`, common/model_offload.h). A component on the CPU holds nothing
// on the GPU. An offloaded one holds its weights there only during its use: its stage process
// peaks at weights + activations as on the GPU (the copy is made per use), but on a GPU shared
// with the other components it adds nothing while another component runs, so it counts in the
// largest in-use term of SharedGpuPeakMib instead of in the resident weights.
//
// Plain values and pure functions; thread-compatible. Errors: INVALID_ARGUMENT for a family with no
// component shapes, bytes per parameter other than 2 or 4, or a request below one latent cell.
#ifndef DGRID_PLANNER_STAGE_MEMORY_H_
#define DGRID_PLANNER_STAGE_MEMORY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "planner/cost_model.h"
#include "planner/memory_model.h"
#include "planner/model_shape.h"

namespace dgrid::planner {

// Where a component's weights and activations live.
enum class ComponentPlacement { kGpu, kCpu, kOffload };
const char* ComponentPlacementName(ComponentPlacement placement);

// A transformer text encoder as its config.json gives it (T5 / UMT5 encoder, CLIP text model).
struct TextEncoderShape {
  std::string name;  // "T5-XXL encoder"
  double vocab = 0;
  double width = 0;  // d_model / hidden_size
  double layers = 0;
  double heads = 0;
  double head_dim = 0;
  double ffn = 0;          // d_ff / intermediate_size
  bool gated_ffn = false;  // T5 v1.1 gated-gelu: two input projections
  double positions = 0;    // learned position embeddings (CLIP); 0 for relative (T5)
  int default_tokens = 0;  // tokens a prompt is padded to (max_sequence_length / 77)
  double Parameters() const;
};

// A VAE decoder, as far as its size and its decode's live tensors go.
struct VaeDecoderShape {
  std::string name;  // "AutoencoderKL decoder"
  double parameters = 0;
  double live_planes = 0;  // channel x frame planes of the output's size live at the peak
  int default_tile = 0;    // --vae-tile-size 0: the VAE's tile side, pixels
};

struct FamilyComponents {
  std::vector<TextEncoderShape> text_encoders;
  VaeDecoderShape vae;
};

// The released configurations of `model`'s family (FLUX.1: CLIP-L + T5-XXL, AutoencoderKL;
// Wan2.1: UMT5-XXL, AutoencoderKLWan). INVALID_ARGUMENT for another family.
absl::StatusOr<FamilyComponents> ComponentsOf(const ModelShape& model);

// AutoencoderKL's decoder parameters (conv_in, the mid block, up blocks of layers_per_block + 1
// residual blocks with an upsampler but the last, conv_out) from its config.
double AutoencoderKlDecoderParameters(const std::vector<int>& block_out_channels,
                                      int layers_per_block, int latent_channels, int out_channels);
// AutoencoderKLWan's (Wan2.1) decoder parameters from its config, as
// services/decoder/models/autoencoder_kl_wan.cc builds it.
double AutoencoderKlWanDecoderParameters(int base_dim, const std::vector<int>& dim_mult,
                                         int num_res_blocks, int z_dim,
                                         const std::vector<bool>& temporal_downsample);

struct StageEstimate {
  std::string detail;  // what was counted, for the plan's text
  double weights_mib = 0;
  double activations_mib = 0;
  ComponentPlacement placement = ComponentPlacement::kGpu;
  // On the GPU while the stage works; 0 on the CPU.
  double total_mib() const {
    return placement == ComponentPlacement::kCpu ? 0 : weights_mib + activations_mib;
  }
  // On the GPU whether or not the stage works: the weights of a component kept there.
  double resident_mib() const { return placement == ComponentPlacement::kGpu ? weights_mib : 0; }
  // On the GPU only while the stage works, beyond resident_mib(): its activations, and an
  // offloaded component's weights.
  double in_use_mib() const { return total_mib() - resident_mib(); }
};

// What the decoder stage does with a request's output (--vae-tiling and --vae-tile-size).
struct VaeTiling {
  std::string mode = "auto";  // auto, on, off (services/decoder/models/vae_tiling.h)
  int tile_size = 0;          // pixels; 0: the VAE's default
};

// The encoder stage's peak: its text encoders at `bytes_per_parameter` (2: bf16, 4: float32) for
// `tokens` tokens (0: each encoder's default).
absl::StatusOr<StageEstimate> EncoderPeak(const ModelShape& model, int bytes_per_parameter,
                                          int tokens = 0,
                                          ComponentPlacement placement = ComponentPlacement::kGpu);
// The decoder stage's peak for `request`'s output.
absl::StatusOr<StageEstimate> DecoderPeak(const ModelShape& model, const RequestShape& request,
                                          const VaeTiling& tiling, int bytes_per_parameter,
                                          ComponentPlacement placement = ComponentPlacement::kGpu);

// Whether --vae-tiling `tiling` tiles an output of width x height with the VAE's `vae`
// (services/decoder/models/vae_tiling.h VaeDecodeIsTiled: on, or auto above 2048 x 2048 pixels,
// and the output larger than one tile on a side).
bool DecodeIsTiled(const VaeDecoderShape& vae, const VaeTiling& tiling, int width, int height);

// One GPU shared by the denoiser and the stages: every weight kept on the GPU is resident; the
// stages run one after the other, so the in-use peak is the largest one stage holds.
//   peak = denoiser weights + the stages' resident weights
//          + max(denoiser activations + collectives, each stage's in-use bytes)
// where an offloaded stage's in-use bytes are its weights and activations (common/model_offload.h
// copies the weights in for the use and frees them after it). With `dit_model_offload`
// (--dit-offload model, services/denoiser/dit_placement.h) the DiT's weights are on the GPU only
// while it denoises, so they move into its in-use term:
//   peak = the stages' resident weights
//          + max(denoiser weights + activations + collectives, each stage's in-use bytes)
// and with every stage offloaded too the peak is the largest component's use, max(encoders, DiT +
// activations, VAE), rather than the sum of the weights.
double SharedGpuPeakMib(const MemoryEstimate& denoiser, const std::vector<StageEstimate>& stages,
                        bool dit_model_offload = false);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_STAGE_MEMORY_H_
