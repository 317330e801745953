// Parallel VAE decode: one picture's latent rows split over the ranks of a group, each rank running
// the single-rank decoder layers on its band and exchanging what crosses the band edges, so that
// the result is the single-rank decode's (exact up to float rounding, not a blend of tiles as
// --vae-tiling is).
//
// Rank r of N owns a contiguous band of latent rows (VaeRowBands: uneven splits allowed, each band
// at least one row); every upsampler doubles every band, so bands stay aligned at each resolution.
// What needs the neighbours or the whole picture, and how it gets it:
//   - a convolution with a kernel taller than one row: the `padding` rows above and below the band
//     from the neighbouring ranks (SendRecvStart in a ring, overlapped with the convolution of the
//     band's interior; zero rows at the picture's top and bottom, as the convolution's padding);
//   - a group norm: the statistics of the whole picture (AllReduceSum of per-group sums, then of
//     squared deviations from the global mean, in float64);
//   - the mid-block self-attention: every position's keys and values (AllGather; each rank attends
//     with its own queries);
//   - the output: AllGather of the bands' pixel rows, in row order, on every rank.
// Communication per decode: two SendRecv per 3x3 convolution, two AllReduceSum per group norm, two
// AllGather for the attention and one for the output.
//
// Threads: one call at a time per communicator (Communicator's rule); the model may be shared.
// Errors: INVALID_ARGUMENT for a wrong shape or fewer latent rows than ranks; a communicator's
// error (DEADLINE_EXCEEDED, UNAVAILABLE, ...) as it came; LibTorch errors as statuses. Every rank
// must make the same call with the same latents shape.
#ifndef DGRID_SERVICES_DECODER_PARALLEL_VAE_H_
#define DGRID_SERVICES_DECODER_PARALLEL_VAE_H_

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "services/decoder/models/autoencoder_kl.h"
#include "services/decoder/models/autoencoder_kl_wan.h"

namespace dgrid::decoder {

// The latent rows of each of `ranks` ranks for a picture of `height` latent rows: contiguous bands
// in rank order, the first height % ranks of them one row longer. Empty when height < ranks or
// ranks < 1.
std::vector<int64_t> VaeRowBands(int64_t height, int ranks);

// vae.Decode(latents) (no tiling or slicing) computed by the ranks of `comm` together. `latents`
// [B, latent_channels, h, w]: the whole picture's, the same on every rank (each takes its band);
// h >= comm.size(). Returns the whole image [B, out_channels, h * s, w * s] on every rank, on the
// model's device and dtype, which must be the communicator's kind (Gloo: CPU, NCCL: CUDA).
absl::StatusOr<at::Tensor> ParallelVaeDecode(const AutoencoderKL& vae, Communicator& comm,
                                             const at::Tensor& latents);

// vae.Decode(latents) of Wan's video VAE (no tiling or slicing) over the ranks of `comm`: latents
// [B, z_dim, F, h, w] split along h as above, every frame decoded chunk by chunk as alone, each
// rank's causal feature cache holding its own band. Wan's norms are per position (no exchange);
// its causal 3-D convolutions and upsampler convolutions take halo rows, and the per-frame
// attention of the middle block gathers every position's keys and values. Returns the whole
// video [B, out, 1 + 4 (F - 1), s h, s w] on every rank. Errors as above.
absl::StatusOr<at::Tensor> ParallelVaeDecode(const AutoencoderKLWan& vae, Communicator& comm,
                                             const at::Tensor& latents);

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_PARALLEL_VAE_H_
