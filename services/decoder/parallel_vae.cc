// Ref: diffusers AutoencoderKL._decode / Decoder.forward
// (models/autoencoders/{autoencoder_kl,vae}.py, 0.42.1) for what is computed; the band split is the
// single-rank computation rearranged (halo rows for the convolutions, global group-norm statistics,
// gathered keys and values).
#include "services/decoder/parallel_vae.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid::decoder {

std::vector<int64_t> VaeRowBands(int64_t height, int ranks) {
  if (ranks < 1 || height < ranks) return {};
  std::vector<int64_t> bands(ranks, height / ranks);
  for (int64_t r = 0; r < height % ranks; ++r) ++bands[r];
  return bands;
}

namespace {

// The spatial operations of one rank's band (see the header for what each exchanges). A
// communicator failure is kept in status() and thrown, so that it unwinds the decoder's layers; the
// caller returns the kept status rather than the exception's.
class BandOps final : public VaeSpatialOps {
 public:
  BandOps(Communicator& comm, std::vector<int64_t> bands) : comm_(comm), bands_(std::move(bands)) {}
  // A decode that threw between StartHalo and FinishHalo still has transfers in flight into (and
  // out of) pending_: they end before the buffers go.
  ~BandOps() override {
    if (!pending_.empty()) comm_.JoinPending().IgnoreError();
  }

  at::Tensor Conv(const Conv2d& conv, const at::Tensor& x) override {
    const int64_t p = conv.padding;
    if (comm_.size() == 1 || p == 0) return conv.Forward(x);
    if (conv.stride != 1 || conv.weight.size(2) != 2 * p + 1) {
      Fail(Internal("parallel VAE decode: a strided or unpadded convolution cannot be split"));
    }
    const int64_t rows = x.size(2);
    at::Tensor above, below;
    StartHalo(x, 2, p, p, above, below);
    const std::vector<int64_t> stride = {1, 1};
    const std::vector<int64_t> width_padding = {0, p};
    if (rows < 2 * p) {
      FinishHalo(above, below);
      return at::conv2d(at::cat({above, x, below}, 2), conv.weight, conv.bias, stride,
                        width_padding);
    }
    // The band with zero rows around it is right except for its first and last `p` output rows,
    // which are redone from the neighbours' rows once they are here.
    at::Tensor out = conv.Forward(x);
    FinishHalo(above, below);
    const bool first = comm_.rank() == 0;
    const bool last = comm_.rank() == comm_.size() - 1;
    if (!first) {
      const at::Tensor slab = at::cat({above, x.narrow(2, 0, 2 * p)}, 2);
      out.narrow(2, 0, p).copy_(at::conv2d(slab, conv.weight, conv.bias, stride, width_padding));
    }
    if (!last) {
      const at::Tensor slab = at::cat({x.narrow(2, rows - 2 * p, 2 * p), below}, 2);
      out.narrow(2, rows - p, p)
          .copy_(at::conv2d(slab, conv.weight, conv.bias, stride, width_padding));
    }
    return out;
  }

  // Two passes over the band (the mean, then the squared deviations from it) with float64 sums,
  // which keeps the variance as accurate as ATen's single-rank statistics.
  at::Tensor Norm(const GroupNorm& norm, const at::Tensor& x) override {
    if (comm_.size() == 1) return norm.Forward(x);
    const int64_t batch = x.size(0);
    const int64_t channels = x.size(1);
    const int64_t groups = norm.groups;
    const at::Tensor grouped = x.reshape({batch, groups, -1}).to(at::kFloat);
    at::Tensor sums = at::empty({batch * groups + 1}, x.options().dtype(at::kDouble));
    sums.narrow(0, 0, batch * groups)
        .copy_(at::sum(grouped, {2}, /*keepdim=*/false, at::kDouble).flatten());
    sums.narrow(0, batch * groups, 1).fill_(static_cast<double>(grouped.size(2)));
    Check(comm_.AllReduceSum(sums), "group norm sums");
    const at::Tensor count = sums.narrow(0, batch * groups, 1);
    const at::Tensor mean = (sums.narrow(0, 0, batch * groups) / count).view({batch, groups, 1});
    const at::Tensor centered = grouped - mean.to(at::kFloat);
    at::Tensor squares =
        at::sum(centered.square(), {2}, /*keepdim=*/false, at::kDouble).flatten().contiguous();
    Check(comm_.AllReduceSum(squares), "group norm variances");
    const at::Tensor rstd =
        at::rsqrt(squares.view({batch, groups, 1}) / count + norm.eps).to(at::kFloat);
    std::vector<int64_t> per_channel(x.dim(), 1);
    per_channel[1] = channels;
    const at::Tensor y =
        (centered * rstd).view(x.sizes()) * norm.weight.to(at::kFloat).view(per_channel) +
        norm.bias.to(at::kFloat).view(per_channel);
    return y.to(x.scalar_type());
  }

  at::Tensor Pad(const at::Tensor& x, const std::vector<int64_t>& pad, int64_t row_dim) override {
    const size_t i = 2 * static_cast<size_t>(x.dim() - 1 - row_dim);
    if (comm_.size() == 1 || pad.size() < i + 2 || (pad[i] == 0 && pad[i + 1] == 0)) {
      return VaeSpatialOps::Pad(x, pad, row_dim);
    }
    at::Tensor above, below;
    StartHalo(x, row_dim, pad[i], pad[i + 1], above, below);
    FinishHalo(above, below);
    std::vector<int64_t> rest = pad;
    rest[i] = rest[i + 1] = 0;
    return at::constant_pad_nd(at::cat({above, x, below}, row_dim), rest, 0);
  }

  at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) override {
    if (comm_.size() == 1) return VaeSpatialOps::Attend(q, k, v);
    return at::scaled_dot_product_attention(q, GatherBands(k, 2), GatherBands(v, 2));
  }

  // Every rank's band of `t` along `dim` (this rank's rows times a factor that is the same on every
  // rank: pixel rows per latent row, or tokens per latent row), in rank order.
  at::Tensor GatherBands(const at::Tensor& t, int64_t dim) {
    const int n = comm_.size();
    const int64_t mine = t.size(dim);
    const int64_t own_rows = bands_[comm_.rank()];
    if (mine % own_rows != 0) {
      Fail(Internal("parallel VAE decode: ", mine, " entries do not split into ", own_rows,
                    " latent rows"));
    }
    const int64_t per_row = mine / own_rows;
    const int64_t widest = *std::max_element(bands_.begin(), bands_.end()) * per_row;
    const at::Tensor rows = t.movedim(dim, 0);
    std::vector<int64_t> shape = rows.sizes().vec();
    // AllGather wants the same size everywhere: shorter bands are padded to the longest.
    shape[0] = widest;
    at::Tensor send = mine == widest ? rows.contiguous() : at::zeros(shape, t.options());
    if (mine != widest) send.narrow(0, 0, mine).copy_(rows);
    shape[0] = widest * n;
    at::Tensor all = at::empty(shape, t.options());
    Check(comm_.AllGather(send, all), "gather");
    std::vector<at::Tensor> parts;
    for (int j = 0; j < n; ++j) parts.push_back(all.narrow(0, j * widest, bands_[j] * per_row));
    return at::cat(parts, 0).movedim(0, dim).contiguous();
  }

  const absl::Status& status() const { return status_; }

 private:
  // Starts the exchange of the `up` rows above the band (the previous rank's last rows) and the
  // `down` rows below it (the next rank's first rows) along `dim`. A ring, so that every rank
  // sends and receives in both steps (the wrapped-around rows are not used).
  void StartHalo(const at::Tensor& x, int64_t dim, int64_t up, int64_t down, at::Tensor& above,
                 at::Tensor& below) {
    const int64_t rows = x.size(dim);
    if (rows < std::max(up, down)) {
      Fail(Internal("parallel VAE decode: a band of ", rows, " rows is too thin"));
    }
    const int rank = comm_.rank();
    const int n = comm_.size();
    const at::Tensor bottom = x.narrow(dim, rows - up, up).contiguous();
    const at::Tensor top = x.narrow(dim, 0, down).contiguous();
    above = at::empty_like(bottom);
    below = at::empty_like(top);
    // The send and receive buffers live until FinishHalo (or ~BandOps): a communicator may still
    // read and write them after SendRecvStart returns (NCCL, on its own stream), so the caching
    // allocator must not hand their memory to the convolution that runs meanwhile.
    pending_ = {bottom, top, above, below};
    if (up > 0) {
      Check(comm_.SendRecvStart(bottom, (rank + 1) % n, above, (rank + n - 1) % n), "halo rows");
    }
    if (down > 0) {
      Check(comm_.SendRecvStart(top, (rank + n - 1) % n, below, (rank + 1) % n), "halo rows");
    }
  }
  // Waits for StartHalo's rows; zero rows stand in beyond the picture's top and bottom.
  void FinishHalo(at::Tensor& above, at::Tensor& below) {
    const absl::Status joined = comm_.JoinPending();
    pending_.clear();
    Check(joined, "halo rows");
    if (comm_.rank() == 0) above.zero_();
    if (comm_.rank() == comm_.size() - 1) below.zero_();
  }

  void Check(const absl::Status& status, absl::string_view what) {
    if (!status.ok()) Fail(Annotate(status, absl::StrCat("parallel VAE decode: ", what)));
  }
  [[noreturn]] void Fail(absl::Status status) {
    if (status_.ok()) status_ = std::move(status);
    throw std::runtime_error(status_.ToString());
  }

  Communicator& comm_;
  const std::vector<int64_t> bands_;
  absl::Status status_;
  // StartHalo's buffers while its transfers may run.
  std::vector<at::Tensor> pending_;
};

// Splits `latents` along `row_dim`, runs `decode` on this rank's band with a BandOps, gathers the
// image's bands along the same dimension.
absl::StatusOr<at::Tensor> DecodeInBands(
    Communicator& comm, const at::Tensor& latents, int64_t row_dim,
    const std::function<absl::StatusOr<at::Tensor>(const at::Tensor&, VaeSpatialOps&)>& decode) {
  const int64_t height = latents.size(row_dim);
  std::vector<int64_t> bands = VaeRowBands(height, comm.size());
  if (bands.empty()) {
    return InvalidArgument("parallel VAE decode: ", height, " latent rows cannot be split over ",
                           comm.size(), " ranks");
  }
  const int64_t first_row = std::accumulate(bands.begin(), bands.begin() + comm.rank(), int64_t{0});
  const int64_t own_rows = bands[comm.rank()];
  BandOps ops(comm, std::move(bands));
  absl::StatusOr<at::Tensor> band = decode(latents.narrow(row_dim, first_row, own_rows), ops);
  if (!ops.status().ok()) return ops.status();
  if (!band.ok()) return band.status();
  absl::StatusOr<at::Tensor> image = TorchCall("parallel VAE decode: the image", [&] {
    c10::InferenceMode inference;
    return ops.GatherBands(*band, row_dim);
  });
  if (!ops.status().ok()) return ops.status();
  return image;
}

}  // namespace

absl::StatusOr<at::Tensor> ParallelVaeDecode(const AutoencoderKL& vae, Communicator& comm,
                                             const at::Tensor& latents) {
  if (!latents.defined() || latents.dim() != 4) {
    return InvalidArgument("parallel VAE decode: expected latents [batch, channels, h, w]");
  }
  return DecodeInBands(comm, latents, 2, [&](const at::Tensor& band, VaeSpatialOps& ops) {
    return vae.DecodeWith(band, ops);
  });
}

absl::StatusOr<at::Tensor> ParallelVaeDecode(const AutoencoderKLWan& vae, Communicator& comm,
                                             const at::Tensor& latents) {
  if (!latents.defined() || latents.dim() != 5) {
    return InvalidArgument("parallel VAE decode: expected latents [batch, channels, frames, h, w]");
  }
  return DecodeInBands(comm, latents, 3, [&](const at::Tensor& band, VaeSpatialOps& ops) {
    return vae.DecodeWith(band, ops);
  });
}

}  // namespace dgrid::decoder
