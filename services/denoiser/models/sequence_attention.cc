// Why the sharded attention equals the single-rank one (up to float rounding):
//
// * Attention is independent per head, and every head sees the same key set: the S text tokens
//   followed by the N real image tokens (diffusers concatenates text first; the order of keys does
//   not change softmax attention).
// * Ulysses: after the all-to-all, the rank with Ulysses coordinate u holds, for heads
//   [u * H/U, (u+1) * H/U), the q/k/v of the U * n image tokens of its ring block (shards
//   U*r .. U*r + U-1, i.e. the contiguous tokens [r * U*n, (r+1) * U*n)). The text q/k/v are the
//   same on every rank (text is replicated), so each rank takes its heads of them locally; no text
//   crosses the network before attention. After attention the image rows go back with the inverse
//   all-to-all, and each rank's text rows of its heads ride along to every rank in the same
//   exchange, so every rank again holds the whole (replicated) text output.
// * Ring: softmax attention over a key set that is a disjoint union of blocks K_1..K_m is
//   out = sum_i exp(lse_i - lse) * out_i with lse = log sum_i exp(lse_i), where (out_i, lse_i) is
//   the attention over K_i alone. The image K/V blocks travel around the ring, so each rank sees
//   every block exactly once. The text K/V is identical on every ring rank and is not passed
//   along: each rank adds its own copy once, in step 0 together with its own block. Hence every
//   key, text or image, enters each rank's merge exactly once.
// * Padding: the image sequence is padded at its end to a multiple of ring * ulysses, so padded
//   tokens form a suffix of the last blocks. Cutting a block to its real prefix is the same as a
//   -inf mask on the padded keys (a block with no real key is skipped). Padded queries compute
//   finite garbage that Forward drops when it gathers the output.
// * RoPE is applied before any of this with each token's global position (Forward builds the
//   tables of this rank's shard), so rotation and sharding commute.
#include "services/denoiser/models/sequence_attention.h"

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"

namespace dgrid::flux {

std::pair<at::Tensor, at::Tensor> AttentionWithLse(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v) {
  // The kernels and the matmuls want [B, H, L, D].
  const at::Tensor qh = q.transpose(1, 2);
  const at::Tensor kh = k.transpose(1, 2);
  const at::Tensor vh = v.transpose(1, 2);
  const int64_t head_dim = q.size(3);
  const bool kernel_head_dim = head_dim % 8 == 0 && head_dim <= 256;
  if (q.is_cuda() && kernel_head_dim) {
    if (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16) {
      const auto r = at::_scaled_dot_product_flash_attention(qh, kh, vh);
      return {std::get<0>(r).transpose(1, 2).to(at::kFloat), std::get<1>(r)};
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
  return {at::matmul(probs, vh.to(at::kFloat)).transpose(1, 2), lse};
}

void MergeAttention(at::Tensor& out, at::Tensor& lse, const at::Tensor& out_b,
                    const at::Tensor& lse_b) {
  if (!out.defined()) {
    out = out_b;
    lse = lse_b;
    return;
  }
  const at::Tensor merged = at::logaddexp(lse, lse_b);
  // Weights [B, H, L] -> [B, L, H, 1] to scale outputs laid out [B, L, H, D].
  const auto weight = [&](const at::Tensor& part) {
    return at::exp(part - merged).transpose(1, 2).unsqueeze(-1);
  };
  out = out * weight(lse) + out_b * weight(lse_b);
  lse = merged;
}

SequenceParallelAttention::SequenceParallelAttention(const SequenceParallelContext& context,
                                                     int64_t image_length)
    : context_(context), plan_(context.layout, image_length) {}

void SequenceParallelAttention::Check(absl::Status status) const {
  if (status.ok()) return;
  if (status_.ok()) status_ = status;
  TORCH_CHECK(false, "sequence-parallel attention: ", status.ToString());
}

at::Tensor SequenceParallelAttention::ShardImage(const at::Tensor& image) const {
  const int64_t pad = plan_.padded - image.size(1);
  std::vector<int64_t> padding(2 * (image.dim() - 2), 0);
  padding.push_back(0);
  padding.push_back(pad);  // constant_pad_nd lists the last dimension first.
  return at::constant_pad_nd(image, padding, 0).narrow(1, plan_.start(), plan_.shard_length);
}

Rope SequenceParallelAttention::ShardRope(const Rope& rope, int64_t text_length) const {
  const int64_t pad = plan_.padded - (rope.cos.size(0) - text_length);
  const auto shard = [&](const at::Tensor& table, double pad_value) {
    const at::Tensor image = at::constant_pad_nd(
        table.narrow(0, text_length, table.size(0) - text_length), {0, 0, 0, pad}, pad_value);
    return at::cat(
        {table.narrow(0, 0, text_length), image.narrow(0, plan_.start(), plan_.shard_length)}, 0);
  };
  // cos 1 and sin 0 leave the padded rows unrotated.
  return Rope{shard(rope.cos, 1.0), shard(rope.sin, 0.0)};
}

at::Tensor SequenceParallelAttention::GatherImage(const at::Tensor& local) const {
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
  return gathered.narrow(1, 0, plan_.length);
}

std::array<at::Tensor, 3> SequenceParallelAttention::SequenceToHeads(const at::Tensor& q,
                                                                     const at::Tensor& k,
                                                                     const at::Tensor& v,
                                                                     int64_t text_length) const {
  const int64_t u = context_.layout.ulysses();
  const int64_t s = text_length, n = q.size(1) - s;
  const int64_t b = q.size(0), h = q.size(2), d = q.size(3), hu = h / u;
  const int64_t head0 = context_.layout.coords().ulysses * hu;
  // send[j][i]: heads group j of this rank's image rows of q / k / v (i = 0, 1, 2), written once
  // straight from the joint inputs.
  at::Tensor send = at::empty({u, 3, b, n, hu, d}, q.options());
  const std::array<const at::Tensor*, 3> inputs = {&q, &k, &v};
  for (int i = 0; i < 3; ++i) {
    send.select(1, i).copy_(
        inputs[i]->narrow(1, s, n).view({b, n, u, hu, d}).permute({2, 0, 1, 3, 4}));
  }
  at::Tensor recv = at::empty_like(send);
  Check(context_.ulysses->AllToAll(send, recv));
  // recv[j][i] holds shard j's image rows for this rank's heads; shards j = 0.. are adjacent in
  // the sequence, so they land one after the other behind the text rows.
  std::array<at::Tensor, 3> joint;
  for (int i = 0; i < 3; ++i) {
    joint[i] = at::empty({b, s + u * n, hu, d}, q.options());
    joint[i].narrow(1, 0, s).copy_(inputs[i]->narrow(1, 0, s).narrow(2, head0, hu));
    joint[i]
        .narrow(1, s, u * n)
        .view({b, u, n, hu, d})
        .copy_(recv.select(1, i).permute({1, 0, 2, 3, 4}));
  }
  return joint;
}

at::Tensor SequenceParallelAttention::HeadsToSequence(const at::Tensor& out,
                                                      int64_t text_length) const {
  const int64_t u = context_.layout.ulysses();
  const int64_t s = text_length, n = (out.size(1) - s) / u;
  const int64_t b = out.size(0), hu = out.size(2), d = out.size(3);
  // send[j] = [text rows | shard j's image rows] of this rank's head group.
  at::Tensor send = at::empty({u, b, s + n, hu, d}, out.options());
  send.narrow(2, 0, s).copy_(out.narrow(1, 0, s).unsqueeze(0).expand({u, b, s, hu, d}));
  send.narrow(2, s, n).copy_(
      out.narrow(1, s, u * n).view({b, u, n, hu, d}).permute({1, 0, 2, 3, 4}));
  at::Tensor recv = at::empty_like(send);
  Check(context_.ulysses->AllToAll(send, recv));
  // recv[j] = head group j of the text rows and of this rank's image rows: heads in j order.
  return recv.permute({1, 2, 0, 3, 4}).reshape({b, s + n, u * hu * d});
}

at::Tensor SequenceParallelAttention::RingAttention(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v,
                                                    int64_t text_length) const {
  const int ring = context_.layout.ring();
  const int r = context_.layout.coords().ring;
  const int64_t s = text_length;
  const int64_t block = k.size(1) - s;
  const auto real_keys = [&](int b) { return plan_.ValidIn(b * block, block); };
  // Own block: text and image rows are adjacent, and the padded keys are a suffix of the image
  // rows, so the keys to use are a prefix of the joint buffers (no copy).
  const int64_t own_valid = real_keys(r);
  if (ring == 1) {
    return at::scaled_dot_product_attention(q.transpose(1, 2),
                                            k.narrow(1, 0, s + own_valid).transpose(1, 2),
                                            v.narrow(1, 0, s + own_valid).transpose(1, 2))
        .transpose(1, 2);
  }
  at::Tensor kv = at::stack({k.narrow(1, s, block), v.narrow(1, s, block)}, 0);
  at::Tensor incoming = at::empty_like(kv);
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
    at::Tensor block_k, block_v;
    if (step == 0) {  // The text K/V, once (see the top of the file), with the own block.
      block_k = k.narrow(1, 0, s + own_valid);
      block_v = v.narrow(1, 0, s + own_valid);
    } else {
      const int64_t valid = real_keys(b);
      block_k = kv[0].narrow(1, 0, valid);
      block_v = kv[1].narrow(1, 0, valid);
    }
    if (block_k.size(1) > 0) {
      const auto [out_b, lse_b] = AttentionWithLse(q, block_k, block_v);
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

at::Tensor SequenceParallelAttention::Attend(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, int64_t text_length) const {
  const int64_t s = text_length;
  const int64_t n = q.size(1) - s;
  TORCH_CHECK(q.dim() == 4 && n == plan_.shard_length, "sequence-parallel attention: got ",
              q.size(1), " tokens, expected ", s, " text + ", plan_.shard_length, " image");
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "sequence-parallel attention: q, k, v shapes differ");
  if (context_.layout.ulysses() == 1) return RingAttention(q, k, v, s).flatten(2, 3);
  const auto [q_heads, k_heads, v_heads] = SequenceToHeads(q, k, v, s);
  return HeadsToSequence(RingAttention(q_heads, k_heads, v_heads, s), s);
}

}  // namespace dgrid::flux
