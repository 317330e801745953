#include "planner/cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "planner/json_fields.h"
#include "planner/memory_model.h"

namespace dgrid::planner {
namespace {

constexpr double kBf16Bytes = 2;

double LinkGbps(const LinkSpeeds& links, LinkClass link) {
  switch (link) {
    case LinkClass::kNvlink:
      return links.nvlink_gbps;
    case LinkClass::kPcie:
      return links.pcie_gbps;
    case LinkClass::kInterNode:
      return links.inter_node_gbps;
  }
  return links.inter_node_gbps;
}

double TransferMs(double bytes, double gbps) { return bytes / (gbps * 1e9) * 1e3; }

}  // namespace

const char* LinkClassName(LinkClass link) {
  switch (link) {
    case LinkClass::kNvlink:
      return "nvlink";
    case LinkClass::kPcie:
      return "pcie";
    case LinkClass::kInterNode:
      return "inter-node";
  }
  return "?";
}

std::string GroupShape::ToString() const {
  return absl::StrCat("cfg", cfg, "-ring", ring, "-ulysses", ulysses);
}

absl::StatusOr<StepEstimate> CostModel::Step(const ModelShape& model, const RequestShape& request,
                                             const GroupShape& layout) const {
  if (layout.cfg < 1 || layout.cfg > 2 || layout.ring < 1 || layout.ulysses < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout ", layout.ToString(), ": cfg must be 1 or 2, ring and ulysses >= 1"));
  }
  if (model.num_heads % layout.ulysses != 0) {
    return absl::InvalidArgumentError(absl::StrCat("layout ", layout.ToString(), ": ulysses ",
                                                   layout.ulysses, " does not divide the ",
                                                   model.num_heads, " heads of ", model.name));
  }
  if (request.width < model.pixels_per_token || request.height < model.pixels_per_token ||
      request.steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat("request ", request.width, "x", request.height,
                                                   ", ", request.steps, " steps: too small"));
  }
  const int sp = layout.ring * layout.ulysses;
  if (request.frames < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("request: frames must be >= 1, got ", request.frames));
  }
  if (request.batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("request: batch must be >= 1, got ", request.batch));
  }
  // Image (or video) tokens: a video's latent frames times one frame's tokens.
  const int64_t image = model.VideoTokens(request.width, request.height, request.frames);
  // Joint attention (FLUX) runs over text + image tokens, self-attention (Wan) over the video
  // tokens alone; the sequence is padded to a multiple of sp.
  const int64_t joint = model.joint_text_attention ? model.text_tokens : 0;
  const int64_t seq = (image + joint + sp - 1) / sp * sp;
  // Forward passes each CFG branch of the group runs per step (batched into one call).
  // A batch of requests multiplies them: one forward runs every request's samples.
  const int passes = (request.cfg ? (layout.cfg == 2 ? 1 : 2) : 1) * request.batch;
  // Per rank: text and image are both sharded over the SP ranks (services/denoiser/models/
  // sequence_attention.h), so the linear layers see 1/SP of the tokens, and attention (each rank's
  // queries over every key, or all queries of its head group) 1/SP of the attention work. (Wan's
  // cross-attention projects the whole text on every rank: at 512 text tokens against tens of
  // thousands of video tokens, under 2% of a step, not modelled.)
  const double flops_per_gpu = model.ForwardFlops(image) * passes / sp;

  StepEstimate e;
  e.compute_ms = calibration_.overhead_ms + flops_per_gpu / (calibration_.rate_tflops * 1e12) * 1e3;
  const double d = model.inner_dim();
  const double layers = model.attention_layers();
  const double latency_ms = links_.latency_us / 1e3;
  if (layout.ulysses > 1) {
    // Two all-to-alls per attention layer: Q, K and V of the local tokens to their head shards
    // in one (grouped), the output back in the other; each moves (U-1)/U of what it holds.
    const double u = layout.ulysses;
    const double bytes =
        4.0 * (static_cast<double>(seq) / sp) * d * kBf16Bytes * (u - 1) / u * passes;
    e.ulysses_ms =
        layers * (TransferMs(bytes, LinkGbps(links_, layout.ulysses_link)) + 2 * latency_ms);
  }
  if (layout.ring > 1) {
    // R-1 hops of this rank's K and V block (seq/R tokens x D/U channels) per attention layer,
    // overlapped with the blockwise attention up to links.ring_overlap of the traffic; the hop
    // synchronisations are always exposed.
    const double r = layout.ring;
    const double bytes =
        (r - 1) * 2.0 * (static_cast<double>(seq) / r) * (d / layout.ulysses) * kBf16Bytes * passes;
    const double transfer = TransferMs(bytes, LinkGbps(links_, layout.ring_link));
    const double attention_flops = 4.0 * seq * seq * d / sp * passes;
    const double attention_ms = attention_flops / (calibration_.rate_tflops * 1e12) * 1e3;
    const double exposed = std::max(transfer - attention_ms, (1 - links_.ring_overlap) * transfer);
    e.ring_ms = layers * (exposed + (r - 1) * latency_ms);
  }
  if (layout.cfg == 2 && request.cfg) {
    // The two branches swap their noise predictions once per step (image tokens x channels, for
    // each request of a batch).
    const double bytes =
        static_cast<double>(image) / sp * model.in_channels * kBf16Bytes * request.batch;
    e.cfg_ms = TransferMs(bytes, LinkGbps(links_, layout.ring_link)) + latency_ms;
  }
  return e;
}

double DefaultHostToDeviceGbps(absl::string_view card_name) {
  if (card_name.empty()) return kMeasuredHostToDeviceGbps;  // unnamed: the card measured
  for (absl::string_view gen5 : {"H100", "H200", "H20", "B200", "B100", "GH200", "GB200"}) {
    if (absl::StrContains(card_name, gen5)) return kMeasuredHostToDeviceGbps;
  }
  return kMeasuredHostToDeviceGbps / 2;
}

absl::StatusOr<StepEstimate> CostModel::Step(const ModelShape& model, const RequestShape& request,
                                             const GroupShape& layout,
                                             const OffloadShape& offload) const {
  ASSIGN_OR_RETURN(StepEstimate e, Step(model, request, layout));
  // Forwards this rank runs per step, each copying (or gathering) every block once: two for CFG
  // run pass after pass on one rank (FLUX, Wan without cfg_batch); a batch of requests shares
  // each forward.
  const int forwards = request.cfg && layout.cfg == 1 && !offload.cfg_batched ? 2 : 1;
  if (offload.shard_prefetch > 0) {
    if (offload.prefetch > 0 || layout.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cost model: sharded weights need a group of 2 or more GPUs and no offload (layout ",
          layout.ToString(), ")"));
    }
    // Per block (ShardGatherBytesPerForward's terms): its gather's transfer and latency, and the
    // compute that hides the transfer when the gathers overlap, the block before it (a pass begins
    // block i + 1's gather as block i computes; nothing computes ahead of the first block's). The
    // blocks' compute (the step's less the fixed overhead) is spread over them by weight bytes.
    const std::vector<double> block_bytes = model.BlockWeightBytes();
    double all_bytes = 0;
    for (double bytes : block_bytes) all_bytes += bytes;
    const double forward_compute_ms =
        std::max(0.0, e.compute_ms - calibration_.overhead_ms) / forwards;
    const int n = layout.size();
    double gather_ms = 0;
    for (size_t b = 0; b < block_bytes.size(); ++b) {
      const double transfer_ms = TransferMs(ShardBytesPerRank(block_bytes[b], n) * (n - 1),
                                            LinkGbps(links_, layout.ring_link));
      const double hiding_ms = calibration_.shard_gathers_overlap && b > 0 && all_bytes > 0
                                   ? forward_compute_ms * block_bytes[b - 1] / all_bytes
                                   : 0;
      gather_ms += std::max(0.0, transfer_ms - hiding_ms) + links_.latency_us / 1e3;
    }
    e.gather_ms = forwards * gather_ms;
  }
  if (offload.prefetch <= 0) return e;
  if (!(calibration_.host_to_device_gbps > 0)) {
    return absl::InvalidArgumentError("cost model: host_to_device_gbps must be > 0");
  }
  double block_bytes = 0;
  for (double bytes : model.BlockWeightBytes()) block_bytes += bytes;
  const double copy_ms = TransferMs(block_bytes * forwards, calibration_.host_to_device_gbps);
  e.copy_ms = std::max(0.0, copy_ms - e.total_ms());
  return e;
}

absl::StatusOr<double> CostModel::RequestMs(const ModelShape& model, const RequestShape& request,
                                            const GroupShape& layout) const {
  ASSIGN_OR_RETURN(StepEstimate step, Step(model, request, layout));
  if (request.skipped_steps < 0 || request.skipped_steps >= request.steps) {
    return absl::InvalidArgumentError(absl::StrCat("request: skipped_steps must be in [0, ",
                                                   request.steps - 1, "], got ",
                                                   request.skipped_steps));
  }
  double skipped_share = 0;
  if (request.cache == "fbcache") {
    skipped_share = 1.0 / std::max(1, model.attention_layers());
  } else if (request.cache != "teacache" && !request.cache.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("request: cache must be fbcache or teacache, got '", request.cache, "'"));
  } else if (request.cache.empty() && request.skipped_steps > 0) {
    return absl::InvalidArgumentError("request: skipped_steps needs a cache method");
  }
  const int computed = request.steps - request.skipped_steps;
  const int batch = std::max(1, request.batch);
  if (batch == 1 || request.skipped_steps == 0) {
    return step.total_ms() * (computed + request.skipped_steps * skipped_share);
  }
  // A batch of `batch` cached requests of this class: each skips skipped_steps of steps, and a
  // member that skips a step leaves that step's forward (fbcache after the first block), so on
  // average `rows` of the batch run each step in full. A step of r rows costs the lone step plus
  // (r - 1) / (batch - 1) of the difference to the full batch's (the batched step grows about
  // linearly in rows, Step); under one row it costs r lone steps, as a lone request's skipped steps
  // do. With no skipped steps this is the full batch's step; with batch 1, the lone formula above.
  // A mean-field estimate: it does not know which steps the members skip together.
  RequestShape lone_request = request;
  lone_request.batch = 1;
  ASSIGN_OR_RETURN(StepEstimate lone, Step(model, lone_request, layout));
  const double rows =
      batch * (computed + request.skipped_steps * skipped_share) / std::max(1, request.steps);
  const double per_step =
      rows <= 1 ? lone.total_ms() * rows
                : lone.total_ms() + (step.total_ms() - lone.total_ms()) * (rows - 1) / (batch - 1);
  return per_step * request.steps;
}

absl::StatusOr<Calibration> FitCalibration(const ModelShape& model,
                                           const std::vector<MeasuredRow>& rows) {
  // t = c0 + F * k with k = 1 / rate; weighted least squares with weights 1/t^2 so that every row
  // counts by its relative error (the small shapes would vanish otherwise).
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  int used = 0;
  for (const MeasuredRow& row : rows) {
    if (row.layout.size() != 1 || row.step_ms <= 0 || row.offload.prefetch > 0) continue;
    // A batch of requests runs every request's passes in one forward (RequestShape::batch).
    const int passes = (row.request.cfg ? 2 : 1) * std::max(1, row.request.batch);
    const double x = model.ForwardFlops(model.VideoTokens(row.request.width, row.request.height,
                                                          row.request.frames)) *
                     passes / 1e12;  // TFLOP
    const double w = 1.0 / (row.step_ms * row.step_ms);
    sw += w;
    sx += w * x;
    sy += w * row.step_ms;
    sxx += w * x * x;
    sxy += w * x * row.step_ms;
    ++used;
  }
  if (used < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration: need >= 2 single-GPU rows, got ", used));
  }
  // det / (sw * sxx) is the rows' weighted FLOP spread relative to their size: degenerate only when
  // the rows' FLOPs (almost) coincide, whatever the model's scale (a tiny test model's forward is
  // ~1e-5 TFLOP, so an absolute bound on det would refuse any two of its rows).
  const double det = sw * sxx - sx * sx;
  if (!(det > 1e-9 * sw * sxx)) return absl::InvalidArgumentError("calibration: degenerate rows");
  const double k = (sw * sxy - sx * sy) / det;  // ms per TFLOP
  const double c0 = (sy - k * sx) / sw;
  if (!(k > 0)) return absl::InvalidArgumentError("calibration: fitted rate is not positive");
  Calibration c;
  c.overhead_ms = std::max(0.0, c0);
  c.rate_tflops = 1e3 / k;
  c.source = absl::StrCat("fit to ", used, " measured rows");
  return c;
}

absl::StatusOr<double> FitHostToDeviceGbps(const ModelShape& model, const Calibration& calibration,
                                           const std::vector<MeasuredRow>& rows) {
  // Copy-bound rows predict bytes / B: minimising sum (a_i / B - 1)^2 with a_i = bytes_i / t_i
  // (each row's own bandwidth) gives 1 / B = sum a_i / sum a_i^2.
  const CostModel plain(calibration, LinkSpeeds());
  double sa = 0, saa = 0;
  int used = 0;
  for (const MeasuredRow& row : rows) {
    if (row.offload.prefetch <= 0 || row.step_ms <= 0) continue;
    ASSIGN_OR_RETURN(StepEstimate compute, plain.Step(model, row.request, row.layout));
    const int forwards = row.request.cfg && row.layout.cfg == 1 && !row.offload.cfg_batched ? 2 : 1;
    double bytes = 0;
    for (double b : model.BlockWeightBytes()) bytes += b * forwards;
    const double a = bytes / (row.step_ms * 1e-3) / 1e9;  // GB/s
    if (compute.total_ms() >= row.step_ms) continue;      // compute-bound: says nothing of B
    sa += a;
    saa += a * a;
    ++used;
  }
  if (used == 0) {
    return absl::InvalidArgumentError("host-to-device fit: no copy-bound offload rows");
  }
  return saa / sa;
}

absl::StatusOr<double> FitCollectiveLatencyUs(const ModelShape& model,
                                              const Calibration& calibration,
                                              const LinkSpeeds& links,
                                              const std::vector<MeasuredRow>& rows) {
  auto loss = [&](double latency_us) -> absl::StatusOr<double> {
    LinkSpeeds l = links;
    l.latency_us = latency_us;
    const CostModel cost(calibration, l);
    double sum = 0;
    for (const MeasuredRow& row : rows) {
      if (row.layout.size() == 1 || row.offload.prefetch > 0) continue;
      ASSIGN_OR_RETURN(StepEstimate e, cost.Step(model, row.request, row.layout));
      const double rel = e.total_ms() / row.step_ms - 1;
      sum += rel * rel;
    }
    return sum;
  };
  int multi = 0;
  for (const MeasuredRow& row : rows) {
    multi += row.layout.size() > 1 && row.offload.prefetch == 0 ? 1 : 0;
  }
  if (multi == 0) return absl::InvalidArgumentError("latency fit: no multi-GPU rows");
  // Coarse scan then refinement; the loss is smooth and one-dimensional.
  double best = 0, best_loss = std::numeric_limits<double>::infinity();
  for (double us = 0; us <= 5000; us += 10) {
    ASSIGN_OR_RETURN(double v, loss(us));
    if (v < best_loss) {
      best_loss = v;
      best = us;
    }
  }
  for (double us = std::max(0.0, best - 10); us <= best + 10; us += 0.5) {
    ASSIGN_OR_RETURN(double v, loss(us));
    if (v < best_loss) {
      best_loss = v;
      best = us;
    }
  }
  return best;
}

bool HasDitOffload(const nlohmann::json& report) {
  if (!report.is_object() || !report.contains("config") || !report["config"].is_object()) {
    return false;
  }
  const nlohmann::json& config = report["config"];
  if (!config.contains("dit_offload")) return false;
  const nlohmann::json& offload = config["dit_offload"];
  return !(offload.is_string() && offload.get<std::string>() == "none");
}

absl::StatusOr<int> OffloadPrefetchOfReport(const nlohmann::json& report, int num_blocks) {
  if (!HasDitOffload(report)) return 0;
  const nlohmann::json& offload = report["config"]["dit_offload"];
  const std::string text = offload.is_string() ? offload.get<std::string>() : offload.dump();
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.dit_offload: expected \"layerwise, prefetch N ...\" or \"none\", got '", text,
        "'"));
  };
  constexpr absl::string_view kPrefix = "layerwise, prefetch ";
  if (!absl::StartsWith(text, kPrefix)) return bad();
  const absl::string_view rest = absl::string_view(text).substr(kPrefix.size());
  const absl::string_view number = rest.substr(0, rest.find(' '));
  double value = 0;
  if (!absl::SimpleAtod(number, &value) || !(value > 0) || !std::isfinite(value)) return bad();
  const int blocks = std::max(num_blocks, 1);
  if (absl::StrContains(number, '.') || absl::StrContains(number, 'e')) {
    // A fraction of the blocks, as DitOffload::PrefetchDepth makes it a depth.
    if (value > 1) return bad();
    return std::max(1, static_cast<int>(std::ceil(value * blocks)));
  }
  if (value != std::floor(value)) return bad();
  return std::min(static_cast<int>(value), blocks);
}

namespace {

// dgrid-bench-denoise --batches reports (tool "dgrid-batching-gpu"): one row per batch size, its
// mean step time over the batch (one GPU).
absl::Status ReadBatchRows(const nlohmann::json& json, const std::string& path,
                           std::vector<MeasuredRow>* rows) {
  const std::string none;
  const double no_cfg = 1;
  if (!json.contains("config")) return absl::InvalidArgumentError("config: missing");
  const nlohmann::json& config = json["config"];
  ASSIGN_OR_RETURN(int width, IntField(config, "config", "width"));
  ASSIGN_OR_RETURN(int height, IntField(config, "config", "height"));
  ASSIGN_OR_RETURN(double cfg_scale, NumberField(config, "config", "true_cfg_scale", &no_cfg));
  ASSIGN_OR_RETURN(std::string card, StringField(json, "", "card", &none));
  ASSIGN_OR_RETURN(const nlohmann::json* measured, ArrayField(json, "", "rows"));
  for (size_t i = 0; i < measured->size(); ++i) {
    const std::string where = absl::StrCat("rows[", i, "]");
    MeasuredRow row;
    ASSIGN_OR_RETURN(row.request.batch, IntField((*measured)[i], where, "batch"));
    ASSIGN_OR_RETURN(row.step_ms, NumberField((*measured)[i], where, "mean_step_ms"));
    if (row.request.batch < 1 || !(row.step_ms > 0)) {
      return absl::InvalidArgumentError(where + ": batch must be >= 1 and mean_step_ms > 0");
    }
    row.label = absl::StrCat(path, "#batch", row.request.batch);
    row.card = card;
    row.request.width = width;
    row.request.height = height;
    row.request.cfg = cfg_scale > 1;
    rows->push_back(row);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<MeasuredRow>> ReadBenchRows(const std::vector<std::string>& paths) {
  std::vector<MeasuredRow> rows;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
    absl::StatusOr<nlohmann::json> parsed = ParseJsonText(text, path);
    if (!parsed.ok() || !parsed->is_object()) continue;  // not a report
    const nlohmann::json& json = *parsed;
    const std::string none;
    ASSIGN_OR_RETURN(std::string tool, StringField(json, "", "tool", &none));
    auto named = [&](const absl::Status& s) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
    };
    if (tool == "dgrid-batching-gpu") {
      absl::Status read = ReadBatchRows(json, path, &rows);
      if (!read.ok()) return named(read);
      continue;
    }
    if (tool != "dgrid") continue;
    MeasuredRow row;
    row.label = path;
    if (!json.contains("config")) return named(absl::InvalidArgumentError("config: missing"));
    const nlohmann::json& config = json["config"];
    absl::StatusOr<int> w = IntField(config, "config", "width");
    absl::StatusOr<int> h = IntField(config, "config", "height");
    absl::StatusOr<double> ms = NumberField(json, "", "median_step_ms");
    const double no_cfg = 1;
    absl::StatusOr<double> cfg_scale = NumberField(config, "config", "true_cfg_scale", &no_cfg);
    const std::string single = "cfg1-ring1-ulysses1";
    absl::StatusOr<std::string> layout = StringField(config, "config", "layout", &single);
    absl::StatusOr<std::string> card = StringField(json, "", "card", &none);
    const int one_frame = 1;
    absl::StatusOr<int> frames = IntField(config, "config", "num_frames", &one_frame);
    const double no_guidance = 0;
    absl::StatusOr<double> guidance = NumberField(config, "config", "guidance_scale", &no_guidance);
    for (const absl::Status& s :
         {w.status(), h.status(), ms.status(), cfg_scale.status(), layout.status(), card.status(),
          frames.status(), guidance.status()}) {
      if (!s.ok()) return named(s);
    }
    absl::StatusOr<GroupShape> shape = ParseGroupShape(*layout, "config.layout");
    if (!shape.ok()) return named(shape.status());
    row.layout = *shape;
    row.card = *card;
    row.request.width = *w;
    row.request.height = *h;
    row.request.frames = std::max(*frames, 1);
    // FLUX rows run true CFG when true_cfg_scale > 1; a video (Wan) row's guidance_scale is its
    // classifier-free guidance (two passes a step when > 1).
    row.request.cfg = *cfg_scale > 1 || (json["config"].contains("num_frames") && *guidance > 1);
    row.step_ms = *ms;
    // Layerwise offload: the prefetch depth (of the report's shape's blocks) and whether Wan's
    // CFG passes ran as one batch (one copy of the blocks a step).
    if (HasDitOffload(json)) {
      const std::string default_shape = families::DefaultFamily().DefaultShape().name;
      const bool no_batch = false;
      absl::StatusOr<std::string> shape_name =
          StringField(config, "config", "shape", &default_shape);
      absl::StatusOr<bool> cfg_batch = BoolField(config, "config", "cfg_batch", &no_batch);
      if (!shape_name.ok()) return named(shape_name.status());
      if (!cfg_batch.ok()) return named(cfg_batch.status());
      absl::StatusOr<ModelShape> model = families::LookupShape(*shape_name);
      if (!model.ok()) return named(model.status());
      absl::StatusOr<int> prefetch =
          OffloadPrefetchOfReport(json, static_cast<int>(model->BlockWeightBytes().size()));
      if (!prefetch.ok()) return named(prefetch.status());
      row.offload.prefetch = *prefetch;
      row.offload.cfg_batched = *cfg_batch;
    }
    rows.push_back(row);
  }
  return rows;
}

absl::StatusOr<GroupShape> ParseGroupShape(const std::string& text, absl::string_view field) {
  GroupShape shape;
  if (std::sscanf(text.c_str(), "cfg%d-ring%d-ulysses%d", &shape.cfg, &shape.ring,
                  &shape.ulysses) != 3 ||
      shape.cfg < 1 || shape.ring < 1 || shape.ulysses < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": expected cfgC-ringR-ulyssesU, got '", text, "'"));
  }
  return shape;
}

std::vector<std::string> ExpandJsonPaths(absl::string_view list) {
  std::vector<std::string> files;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    const std::string item(part);
    std::error_code ec;
    if (!std::filesystem::is_directory(item, ec)) {
      files.push_back(item);
      continue;
    }
    for (const auto& entry : std::filesystem::directory_iterator(item, ec)) {
      if (entry.path().extension() == ".json") files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace dgrid::planner
