// Why the sharded attention equals the single-rank one (up to float rounding):
//
// * Attention is independent per head, and every query attends to the same key set: all real
//   text and image tokens. The order of the keys does not change softmax attention, so a rank may
//   see them in any order (here: shard by shard, each shard's text rows before its image rows).
// * Sharding: text and image are each padded at their ends to a multiple of SP = ring * ulysses
//   and cut into SP shards; shard s = u + U * r lives on the rank with Ulysses coordinate u and
//   ring coordinate r, as [text shard | image shard]. Token-wise layers (linear, norms, RoPE with
//   each token's global position) commute with this split; attention is the only mixing step.
// * Ulysses: one all-to-all moves q, k, v so that the rank with coordinate u holds heads
//   [u * H/U, (u+1) * H/U) of the U local sequences of its ring block (shards U*r .. U*r + U-1);
//   after attention the inverse all-to-all returns every head group of its own rows to each rank.
//   Heads being independent, both exchanges and the attention may run in chunks of each rank's
//   heads (SequenceParallelContext::ulysses_chunks): every head meets the same keys either way.
// * Ring: softmax attention over a key set that is a disjoint union of blocks K_1..K_m is
//   out = sum_i exp(lse_i - lse) * out_i with lse = log sum_i exp(lse_i), where (out_i, lse_i) is
//   the attention over K_i alone. The K/V blocks travel around the ring, so each rank sees every
//   block exactly once.
// * Padding: padded rows are excluded from the keys of every block they occur in (an index of the
//   real rows, the same as a -inf mask; none is built when nothing is padded). Padded queries
//   compute finite garbage that the caller drops (Gather*).

#include "services/denoiser/models/sequence_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dgrid::flux {

namespace {

// Whether the cuDNN attention kernel is still tried for LSE blocks (cleared after it refuses once).
std::atomic<bool> cudnn_lse_usable{true};

// DGRID_ULYSSES_CHUNKS as an integer >= 1; 0 when unset or not such an integer (automatic).
int UlyssesChunksFromEnvironment() {
  static const int chunks = [] {
    const char* v = std::getenv("DGRID_ULYSSES_CHUNKS");
    int parsed = 0;
    return v != nullptr && absl::SimpleAtoi(v, &parsed) && parsed >= 1 ? parsed : 0;
  }();
  return chunks;
}

// Joins `comm`'s operations in flight when the scope is left by an exception, so that the buffers
// they read and write (declared before the guard, destroyed after it) outlive them; on NCCL the
// caching allocator would otherwise hand that memory to the caller's stream while the exchange
// still runs. A normal exit joins nothing (the code joins where it reads the results).
class JoinPendingOnThrow {
 public:
  explicit JoinPendingOnThrow(Communicator* comm) : comm_(comm) {}
  ~JoinPendingOnThrow() {
    if (comm_ != nullptr && std::uncaught_exceptions() > exceptions_) {
      comm_->JoinPending().IgnoreError();
    }
  }
  JoinPendingOnThrow(const JoinPendingOnThrow&) = delete;
  JoinPendingOnThrow& operator=(const JoinPendingOnThrow&) = delete;

 private:
  Communicator* comm_;
  int exceptions_ = std::uncaught_exceptions();
};

}  // namespace

std::pair<at::Tensor, at::Tensor> AttentionWithLse(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v) {
  // The kernels and the matmuls want [B, H, L, D].
  const at::Tensor qh = q.transpose(1, 2);
  const at::Tensor kh = k.transpose(1, 2);
  const at::Tensor vh = v.transpose(1, 2);
  const int64_t head_dim = q.size(3);
  const bool kernel_head_dim = head_dim % 8 == 0 && head_dim <= 128;
  if (q.is_cuda() && kernel_head_dim) {
    if (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16) {
      // cuDNN first (the kernel the one-GPU path gets from SDPA on Hopper; faster than flash
      // here), its LSE [B, H, Lq, 1] in natural log like flash's; flash if cuDNN refuses.
      if (cudnn_lse_usable.load(std::memory_order_relaxed)) {
        try {
          const auto r = at::_scaled_dot_product_cudnn_attention(qh, kh, vh, std::nullopt,
                                                                 /*compute_log_sumexp=*/true);
          return {std::get<0>(r).transpose(1, 2), std::get<1>(r).squeeze(-1)};
        } catch (const c10::Error&) {
          cudnn_lse_usable.store(false);
        }
      }
      const auto r = at::_scaled_dot_product_flash_attention(qh, kh, vh);
      return {std::get<0>(r).transpose(1, 2), std::get<1>(r)};
    }
    if (q.scalar_type() == at::kFloat) {
      const auto r = at::_scaled_dot_product_efficient_attention(qh, kh, vh, std::nullopt,
                                                                 /*compute_log_sumexp=*/true);
      // The kernel pads the LSE's query dimension to a multiple of 32.
      return {std::get<0>(r).transpose(1, 2), std::get<1>(r).narrow(2, 0, q.size(1))};
    }
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const at::Tensor scores =
      at::matmul(qh.to(at::kFloat), kh.to(at::kFloat).transpose(-2, -1)) * scale;
  const at::Tensor lse = at::logsumexp(scores, {-1});
  const at::Tensor probs = at::exp(scores - lse.unsqueeze(-1));
  return {at::matmul(probs, vh.to(at::kFloat)).transpose(1, 2).to(q.scalar_type()), lse};
}

void MergeAttention(at::Tensor& out, at::Tensor& lse, const at::Tensor& out_b,
                    const at::Tensor& lse_b) {
  if (!out.defined()) {
    // A float32 copy (also when out_b is float32 already): the merges below update it in place.
    out = out_b.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    lse = lse_b;
    return;
  }
  const at::Tensor merged = at::logaddexp(lse, lse_b);
  // Weights [B, H, L] -> [B, L, H, 1] to scale outputs laid out [B, L, H, D].
  const auto weight = [&](const at::Tensor& part) {
    return at::exp(part - merged).transpose(1, 2).unsqueeze(-1);
  };
  // Two passes over the output: scale in place, then add the block's share (out_b stays in its
  // own dtype; the arithmetic is float32).
  out.mul_(weight(lse)).addcmul_(out_b, weight(lse_b));
  lse = merged;
}

SequenceParallelAttention::SequenceParallelAttention(const SequenceParallelContext& context,
                                                     int64_t text_length, int64_t image_length)
    : context_(context),
      text_plan_(context.layout, text_length),
      image_plan_(context.layout, image_length) {}

void SequenceParallelAttention::Check(absl::Status status) const {
  if (status.ok()) return;
  if (status_.ok()) status_ = status;
  TORCH_CHECK(false, "sequence-parallel attention: ", status.ToString());
}

at::Tensor SequenceParallelAttention::Shard(const at::Tensor& x,
                                            const SequenceShardPlan& plan) const {
  TORCH_CHECK(x.dim() >= 2 && x.size(1) == plan.length, "sequence-parallel shard: got ", x.size(1),
              " rows, expected ", plan.length);
  std::vector<int64_t> padding(2 * (x.dim() - 2), 0);
  padding.push_back(0);
  padding.push_back(plan.padded - plan.length);  // constant_pad_nd lists the last dimension first.
  return at::constant_pad_nd(x, padding, 0).narrow(1, plan.start(), plan.shard_length);
}

at::Tensor SequenceParallelAttention::ShardText(const at::Tensor& text) const {
  return Shard(text, text_plan_);
}

at::Tensor SequenceParallelAttention::ShardImage(const at::Tensor& image) const {
  return Shard(image, image_plan_);
}

Rope SequenceParallelAttention::ShardRope(const Rope& rope) const {
  const int64_t s = text_plan_.length, n = image_plan_.length;
  TORCH_CHECK(rope.cos.size(0) == s + n, "sequence-parallel rope: tables cover ", rope.cos.size(0),
              " tokens, expected ", s + n);
  const auto shard = [&](const at::Tensor& table, double pad_value) {
    const auto part = [&](int64_t begin, const SequenceShardPlan& plan) {
      const at::Tensor padded = at::constant_pad_nd(
          table.narrow(0, begin, plan.length), {0, 0, 0, plan.padded - plan.length}, pad_value);
      return padded.narrow(0, plan.start(), plan.shard_length);
    };
    return at::cat({part(0, text_plan_), part(s, image_plan_)}, 0);
  };
  // cos 1 and sin 0 leave the padded rows unrotated.
  return Rope{shard(rope.cos, 1.0), shard(rope.sin, 0.0)};
}

at::Tensor SequenceParallelAttention::Gather(const at::Tensor& local,
                                             const SequenceShardPlan& plan) const {
  at::Tensor gathered = local.contiguous();
  // Ulysses first: its shards are adjacent in the sequence (shard = u + U * r).
  const auto gather = [&](Communicator* comm) {
    const at::Tensor send = gathered.unsqueeze(0).contiguous();
    std::vector<int64_t> shape = send.sizes().vec();
    shape[0] = comm->size();
    at::Tensor recv = at::empty(shape, send.options());
    Check(comm->AllGather(send, recv));
    // [P, B, n, ...] -> [B, P * n, ...]
    gathered = recv.transpose(0, 1).flatten(1, 2);
  };
  if (context_.layout.ulysses() > 1) gather(context_.ulysses);
  if (context_.layout.ring() > 1) gather(context_.ring);
  return gathered.narrow(1, 0, plan.length);
}

at::Tensor SequenceParallelAttention::GatherText(const at::Tensor& local) const {
  return Gather(local, text_plan_);
}

at::Tensor SequenceParallelAttention::GatherImage(const at::Tensor& local) const {
  return Gather(local, image_plan_);
}

std::vector<bool> SequenceParallelAttention::RealRows(int shard) const {
  const int64_t st = text_plan_.shard_length, n = image_plan_.shard_length;
  std::vector<bool> real(st + n);
  for (int64_t j = 0; j < st; ++j) real[j] = shard * st + j < text_plan_.length;
  for (int64_t i = 0; i < n; ++i) real[st + i] = shard * n + i < image_plan_.length;
  return real;
}

at::Tensor SequenceParallelAttention::RealKeyIndex(int block, const at::Device& device) const {
  const int u = context_.layout.ulysses();
  std::vector<int64_t> rows;
  bool all_real = true;
  int64_t offset = 0;
  for (int j = 0; j < u; ++j) {
    const std::vector<bool> real = RealRows(u * block + j);
    for (size_t i = 0; i < real.size(); ++i) {
      if (real[i]) {
        rows.push_back(offset + static_cast<int64_t>(i));
      } else {
        all_real = false;
      }
    }
    offset += static_cast<int64_t>(real.size());
  }
  if (all_real) return at::Tensor();
  return at::tensor(rows, at::kLong).to(device);
}

at::Tensor SequenceParallelAttention::RingAttention(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v) const {
  const int ring = context_.layout.ring();
  const int r = context_.layout.coords().ring;
  // The real rows of each ring block's keys: built on the first layer of the Forward call (one
  // small host-to-device copy per block, none when nothing is padded), reused by the others.
  if (key_index_.empty()) {
    for (int b = 0; b < ring; ++b) key_index_.push_back(RealKeyIndex(b, k.device()));
  }
  const auto real = [&](const at::Tensor& x, int b) {
    return key_index_[b].defined() ? x.index_select(1, key_index_[b]) : x;
  };
  if (ring == 1) {
    return at::scaled_dot_product_attention(q.transpose(1, 2), real(k, 0).transpose(1, 2),
                                            real(v, 0).transpose(1, 2))
        .transpose(1, 2);
  }
  at::Tensor kv = at::stack({k, v}, 0);
  at::Tensor incoming = at::empty_like(kv);
  // As in Attend: leaving by an exception joins the hop in flight before `kv` and `incoming` go.
  const JoinPendingOnThrow join_on_throw(context_.ring);
  at::Tensor out, lse;
  for (int step = 0; step < ring; ++step) {
    // The next block's transfer runs while this block's attention computes: it reads `kv`, which
    // the attention only reads too, and writes `incoming`, which the previous step's attention
    // read before this transfer was ordered after it.
    if (step + 1 < ring) {
      Check(context_.ring->SendRecvStart(kv, (r + 1) % ring, incoming, (r + ring - 1) % ring));
    }
    // Block held at this step: it started on ring rank r - step.
    const int b = ((r - step) % ring + ring) % ring;
    const at::Tensor block_k = real(kv[0], b);
    if (block_k.size(1) > 0) {
      const auto [out_b, lse_b] = AttentionWithLse(q, block_k, real(kv[1], b));
      MergeAttention(out, lse, out_b, lse_b);
    }
    if (step + 1 < ring) {
      Check(context_.ring->JoinPending());
      std::swap(kv, incoming);
    }
  }
  TORCH_CHECK(out.defined(), "sequence-parallel attention: no keys to attend to");
  return out.to(q.scalar_type());
}

int64_t SequenceParallelAttention::UlyssesChunks(int64_t local_heads) const {
  if (context_.ulysses_chunks > 0) {
    TORCH_CHECK(local_heads % context_.ulysses_chunks == 0,
                "sequence-parallel attention: ", context_.ulysses_chunks,
                " Ulysses chunks do not divide ", local_heads, " heads");
    return context_.ulysses_chunks;
  }
  if (const int requested = UlyssesChunksFromEnvironment(); requested > 0) {
    // The largest divisor of the local heads up to the request (one value fits every model).
    for (int64_t g = std::min<int64_t>(requested, local_heads); g > 1; --g) {
      if (local_heads % g == 0) return g;
    }
    return 1;
  }
  return context_.layout.ring() == 1 && local_heads % 2 == 0 ? 2 : 1;
}

at::Tensor SequenceParallelAttention::Attend(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v) const {
  const int64_t local = text_plan_.shard_length + image_plan_.shard_length;
  TORCH_CHECK(q.dim() == 4 && q.size(1) == local, "sequence-parallel attention: got ", q.size(1),
              " tokens, expected ", text_plan_.shard_length, " text + ", image_plan_.shard_length,
              " image");
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "sequence-parallel attention: q, k, v shapes differ");
  const int64_t u = context_.layout.ulysses();
  if (u == 1) return RingAttention(q, k, v).flatten(2, 3);
  const int64_t b = q.size(0), h = q.size(2), d = q.size(3), hu = h / u;
  // Heads split as [U, G, Hc]: rank j gets heads [j * hu, (j+1) * hu), sent and attended in G
  // chunks of Hc. The exchanges of neighbouring chunks overlap chunk c's attention.
  const int64_t chunks = UlyssesChunks(hu), hc = hu / chunks;
  Communicator* comm = context_.ulysses;
  // Chunk c of x, destination rank first: send[j] = heads [j * hu + c * hc, ... + hc) of every
  // local row (one copy, the layout the exchange needs; the unchunked path makes the same one).
  const auto pack = [&](const at::Tensor& x, int64_t c) {
    return x.reshape({b, local, u, chunks, hc, d})
        .select(3, c)
        .permute({2, 0, 1, 3, 4})
        .contiguous();
  };
  // Buffers of the exchanges in flight stay referenced until a JoinPending covers them (on NCCL
  // the caching allocator could otherwise hand their memory to the caller's stream too early).
  std::vector<std::vector<at::Tensor>> qkv_send(chunks), qkv_recv(chunks), out_send(chunks),
      out_recv(chunks);
  // Leaving by an exception (a failed Check, a ring failure, an out-of-memory error) joins what is
  // in flight before the buffers above go (this guard is destroyed first).
  const JoinPendingOnThrow join_on_throw(comm);
  const auto start_qkv = [&](int64_t c) {
    qkv_send[c] = {pack(q, c), pack(k, c), pack(v, c)};
    for (const at::Tensor& x : qkv_send[c]) qkv_recv[c].push_back(at::empty_like(x));
    Check(comm->AllToAllManyStart(qkv_send[c], qkv_recv[c]));
  };
  // recv[j] = shard (U*r + j)'s rows for this rank's heads of the chunk; the U local sequences one
  // after the other form the ring block (a view, no copy, for B = 1).
  const auto block = [&](const at::Tensor& x) {
    return x.permute({1, 0, 2, 3, 4}).reshape({b, u * local, hc, d});
  };
  // The order below keeps one chunk's attention between each exchange and its join: chunk c + 1's
  // q/k/v and chunk c - 1's output travel while chunk c attends. With one chunk it is the plain
  // exchange, attention, exchange back.
  start_qkv(0);
  Check(comm->JoinPending());
  for (int64_t c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) start_qkv(c + 1);
    const std::vector<at::Tensor>& in = qkv_recv[c];
    const at::Tensor out = RingAttention(block(in[0]), block(in[1]), block(in[2]));
    // Back: rows of shard j (rows [j * local, (j+1) * local)) to Ulysses rank j (one copy: the
    // attention kernels write their own [B, Hc, U * local, D] output).
    out_send[c] = {out.reshape({b, u, local, hc, d}).permute({1, 0, 2, 3, 4}).contiguous()};
    if (chunks > 1) {
      Check(comm->JoinPending());
      qkv_send[c].clear();
      qkv_recv[c].clear();
    }
    out_recv[c] = {at::empty_like(out_send[c][0])};
    Check(comm->AllToAllManyStart(out_send[c], out_recv[c]));
  }
  Check(comm->JoinPending());
  // out_recv[c][j] = rank j's heads of chunk c for this rank's rows; heads in (j, c) order (one
  // copy, the assembly the layer's output projection needs).
  at::Tensor result = at::empty({b, local, u, chunks, hc, d}, q.options());
  for (int64_t c = 0; c < chunks; ++c) {
    result.select(3, c).copy_(out_recv[c][0].permute({1, 2, 0, 3, 4}));
  }
  return result.view({b, local, h * d});
}

}  // namespace dgrid::flux
