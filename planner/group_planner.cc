#include "planner/group_planner.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace dgrid::planner {
namespace {

int LargestIsland(const NodeTopology& node) {
  std::vector<std::vector<int>> islands = NvlinkIslands(node);
  return islands.empty() ? 1 : static_cast<int>(islands.front().size());
}

// The link a set of `span` consecutive ranks needs, on nodes of `node_gpus` GPUs with NVLink
// islands of `island` GPUs.
LinkClass LinkOf(int span, int island, int node_gpus) {
  if (span <= island && island > 1) return LinkClass::kNvlink;
  if (span <= node_gpus) return LinkClass::kPcie;
  return LinkClass::kInterNode;
}

bool MixUsesCfg(const Workload& workload) {
  for (const RequestClass& c : workload.classes) {
    if (c.shape.cfg) return true;
  }
  return false;
}

// Mix-weighted request time of a layout, ms.
absl::StatusOr<double> MixMs(const ModelShape& model, const CostModel& cost,
                             const Workload& workload, const GroupShape& layout) {
  double total = 0;
  for (const RequestClass& c : workload.classes) {
    ASSIGN_OR_RETURN(double ms, cost.RequestMs(model, c.shape, layout));
    total += c.share * ms;
  }
  return total;
}

struct LayoutChoice {
  GroupShape layout;
  double mix_ms = 0;
  std::string reason;
};

absl::StatusOr<LayoutChoice> BestLayout(const Topology& topology, const ModelShape& model,
                                        const CostModel& cost, const Workload& workload, int size,
                                        bool allow_cfg) {
  std::vector<GroupShape> layouts = PlannableLayouts(topology, model, size, allow_cfg);
  if (layouts.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no layout of ", size, " GPUs fits ", model.name,
                                                   " (", model.num_heads,
                                                   " heads) on this topology"));
  }
  std::vector<std::pair<double, GroupShape>> scored;
  for (const GroupShape& layout : layouts) {
    ASSIGN_OR_RETURN(double ms, MixMs(model, cost, workload, layout));
    scored.emplace_back(ms, layout);
  }
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  LayoutChoice choice{scored[0].second, scored[0].first, ""};
  const GroupShape& l = choice.layout;
  choice.reason = absl::StrFormat("%d GPUs -> %s (ulysses on %s, ring on %s): %.2f s mix-weighted",
                                  size, l.ToString(), LinkClassName(l.ulysses_link),
                                  LinkClassName(l.ring_link), choice.mix_ms / 1e3);
  if (scored.size() > 1) {
    absl::StrAppendFormat(&choice.reason, "; next best %s %.2f s", scored[1].second.ToString(),
                          scored[1].first / 1e3);
  }
  return choice;
}

// Splits of n GPUs into power-of-two group sizes, largest first.
void Splits(int n, int max_part, std::vector<int>* current, std::vector<std::vector<int>>* out) {
  if (n == 0) {
    out->push_back(*current);
    return;
  }
  for (int part = max_part; part >= 1; part /= 2) {
    if (part > n) continue;
    current->push_back(part);
    Splits(n - part, part, current, out);
    current->pop_back();
  }
}

int HighestPowerOfTwo(int n) {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

// Lays the groups of `split` onto `node`: each group on free GPUs of one NVLink island when it
// fits, else on the lowest free indices.
std::vector<std::vector<std::string>> PlaceOnNode(const NodeTopology& node,
                                                  const std::vector<int>& split) {
  std::vector<std::vector<int>> islands = NvlinkIslands(node);
  std::set<int> used;
  std::vector<std::vector<std::string>> placed;
  for (int size : split) {
    std::vector<int> members;
    for (const std::vector<int>& island : islands) {
      std::vector<int> free;
      for (int gpu : island) {
        if (used.count(gpu) == 0) free.push_back(gpu);
      }
      if (static_cast<int>(free.size()) >= size) {
        members.assign(free.begin(), free.begin() + size);
        break;
      }
    }
    if (members.empty()) {
      for (const GpuDevice& gpu : node.gpus) {
        if (used.count(gpu.index) == 0 && static_cast<int>(members.size()) < size) {
          members.push_back(gpu.index);
        }
      }
    }
    std::vector<std::string> names;
    for (int gpu : members) {
      used.insert(gpu);
      names.push_back(absl::StrCat(node.name, ":", gpu));
    }
    placed.push_back(std::move(names));
  }
  return placed;
}

std::string SplitName(const std::vector<int>& split) {
  int total = 0;
  for (int s : split) total += s;
  return absl::StrCat(total, "=", absl::StrJoin(split, "+"));
}

absl::Status CheckMemory(const Topology& topology, const ModelShape& model) {
  // Weights are replicated on every rank; leave 20% for activations and the CUDA context.
  const double need = model.WeightBytes();
  for (const NodeTopology& node : topology.nodes) {
    for (const GpuDevice& gpu : node.gpus) {
      if (need > 0.8 * static_cast<double>(gpu.memory_bytes)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "model %s needs %.1f GB of weights per GPU (+20%% headroom) but GPU %d of node '%s' "
            "has %.1f GB",
            model.name, need / 1e9, gpu.index, node.name, gpu.memory_bytes / 1e9));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<GroupShape> CandidateLayouts(const Topology& topology, const ModelShape& model,
                                         int size, bool allow_cfg) {
  std::vector<GroupShape> out;
  if (topology.nodes.empty() || size < 1) return out;
  const NodeTopology* node = &topology.nodes.front();
  for (const NodeTopology& n : topology.nodes) {
    if (n.gpus.size() > node->gpus.size()) node = &n;
  }
  const int node_gpus = static_cast<int>(node->gpus.size());
  if (size > node_gpus &&
      (size % node_gpus != 0 || size / node_gpus > static_cast<int>(topology.nodes.size()))) {
    return out;
  }
  const int island = LargestIsland(*node);
  for (int cfg = 1; cfg <= (allow_cfg ? 2 : 1); ++cfg) {
    if (size % cfg != 0) continue;
    const int sp = size / cfg;
    for (int u = 1; u <= sp; ++u) {
      if (sp % u != 0 || model.num_heads % u != 0) continue;
      GroupShape shape;
      shape.cfg = cfg;
      shape.ulysses = u;
      shape.ring = sp / u;
      shape.ulysses_link = LinkOf(u, island, node_gpus);
      shape.ring_link = LinkOf(size, island, node_gpus);
      out.push_back(shape);
    }
  }
  return out;
}

std::vector<GroupShape> PlannableLayouts(const Topology& topology, const ModelShape& model,
                                         int size, bool allow_cfg) {
  std::vector<GroupShape> all = CandidateLayouts(topology, model, size, allow_cfg);
  // Ulysses as wide as the heads allow inside one NVLink island, Ring for the rest (across islands
  // or nodes); of each CFG degree only that factorisation is kept. Ring and Ulysses move the same
  // bytes at degree 2 and the cost model does not price Ring's split attention kernels, so the
  // choice between them is this rule, not the model.
  int island = 1;
  for (const NodeTopology& node : topology.nodes) island = std::max(island, LargestIsland(node));
  std::vector<GroupShape> kept;
  for (const GroupShape& shape : all) {
    int widest = 1;
    for (const GroupShape& other : all) {
      if (other.cfg == shape.cfg && other.ulysses <= island)
        widest = std::max(widest, other.ulysses);
    }
    if (shape.ulysses == widest) kept.push_back(shape);
  }
  return kept;
}

absl::StatusOr<double> IsolatedLatencyMs(const Topology& topology, const ModelShape& model,
                                         const CostModel& cost, const RequestShape& request) {
  double best = std::numeric_limits<double>::infinity();
  for (int size = 1; size <= topology.TotalGpus(); size *= 2) {
    for (const GroupShape& layout : PlannableLayouts(topology, model, size, request.cfg)) {
      ASSIGN_OR_RETURN(double ms, cost.RequestMs(model, request, layout));
      best = std::min(best, ms);
    }
  }
  if (best == std::numeric_limits<double>::infinity()) {
    return absl::InvalidArgumentError("no layout fits the topology");
  }
  return best;
}

const char* SloReferenceName(SloReference reference) {
  return reference == SloReference::kBestLayout ? "best-layout" : "single-gpu";
}

absl::StatusOr<std::vector<double>> ReferenceLatenciesMs(const Topology& topology,
                                                         const ModelShape& model,
                                                         const CostModel& cost,
                                                         const Workload& workload,
                                                         SloReference reference) {
  std::vector<double> out;
  for (const RequestClass& c : workload.classes) {
    if (reference == SloReference::kBestLayout) {
      ASSIGN_OR_RETURN(double ms, IsolatedLatencyMs(topology, model, cost, c.shape));
      out.push_back(ms);
    } else {
      ASSIGN_OR_RETURN(double ms, cost.RequestMs(model, c.shape, GroupShape()));
      out.push_back(ms);
    }
  }
  return out;
}

double Sp1ArrivalRate(const Topology& topology, const ModelShape& model, const CostModel& cost,
                      const Workload& workload, double load) {
  absl::StatusOr<double> mix = MixMs(model, cost, workload, GroupShape{});
  if (!mix.ok() || *mix <= 0) return 0;
  return load * topology.TotalGpus() / (*mix / 1e3);
}

absl::StatusOr<std::vector<PlannedGroup>> FixedGroups(const Topology& topology,
                                                      const ModelShape& model,
                                                      const CostModel& cost,
                                                      const Workload& workload, int size,
                                                      int max_inflight) {
  RETURN_IF_ERROR(CheckMemory(topology, model));
  ASSIGN_OR_RETURN(LayoutChoice choice, BestLayout(topology, model, cost, workload, size, false));
  std::vector<PlannedGroup> groups;
  for (const NodeTopology& node : topology.nodes) {
    if (static_cast<int>(node.gpus.size()) % size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("group size ", size, " does not divide the ",
                                                     node.gpus.size(), " GPUs of ", node.name));
    }
    std::vector<int> split(node.gpus.size() / size, size);
    for (std::vector<std::string>& members : PlaceOnNode(node, split)) {
      PlannedGroup g;
      g.id = absl::StrCat("g", groups.size());
      g.gpus = std::move(members);
      g.layout = choice.layout;
      g.max_inflight = max_inflight;
      groups.push_back(std::move(g));
    }
  }
  return groups;
}

absl::StatusOr<Plan> PlanGroups(const Topology& topology, const ModelShape& model,
                                const CostModel& cost, const Workload& workload,
                                const PlacerFactory& make_placer, const PlanOptions& options) {
  RETURN_IF_ERROR(ValidateTopology(topology));
  RETURN_IF_ERROR(CheckMemory(topology, model));
  if (workload.classes.empty()) return absl::InvalidArgumentError("workload: no classes");
  Plan plan;
  plan.workload = workload;
  if (plan.workload.arrival_rate_per_s <= 0) {
    plan.workload.arrival_rate_per_s = Sp1ArrivalRate(topology, model, cost, workload, 0.6);
    plan.reasons.push_back(absl::StrFormat(
        "no arrival rate given: planning for %.2f req/s (60%% of the cluster's SP=1 throughput)",
        plan.workload.arrival_rate_per_s));
  }
  ASSIGN_OR_RETURN(plan.reference_ms,
                   ReferenceLatenciesMs(topology, model, cost, workload, options.slo_reference));
  const bool allow_cfg = MixUsesCfg(workload);
  if (allow_cfg) plan.reasons.push_back("part of the mix uses true CFG: cfg=2 layouts considered");

  // Best layout per group size (node-local sizes, and whole pairs of nodes).
  std::map<int, LayoutChoice> by_size;
  int node_max = 0;
  for (const NodeTopology& node : topology.nodes) {
    node_max = std::max(node_max, static_cast<int>(node.gpus.size()));
  }
  std::vector<int> sizes;
  for (int s = 1; s <= node_max; s *= 2) sizes.push_back(s);
  if (topology.nodes.size() >= 2) sizes.push_back(2 * node_max);
  for (int s : sizes) {
    absl::StatusOr<LayoutChoice> choice = BestLayout(topology, model, cost, workload, s, allow_cfg);
    if (choice.ok()) by_size[s] = *choice;
  }
  if (by_size.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no group layout of ", model.name, " fits this topology"));
  }

  // Candidate cluster splits: the same split on every node, plus node pairs as one group.
  struct Candidate {
    std::string name;
    std::vector<PlannedGroup> groups;
  };
  std::vector<Candidate> candidates;
  const NodeTopology& first = topology.nodes.front();
  std::vector<std::vector<int>> splits;
  std::vector<int> current;
  Splits(static_cast<int>(first.gpus.size()), HighestPowerOfTwo(first.gpus.size()), &current,
         &splits);
  for (const std::vector<int>& split : splits) {
    bool usable = true;
    for (int s : split) usable = usable && by_size.count(s) > 0;
    if (!usable) continue;
    Candidate c;
    c.name = absl::StrCat(SplitName(split), " per node");
    for (const NodeTopology& node : topology.nodes) {
      std::vector<int> node_split = split;
      if (node.gpus.size() != first.gpus.size()) {
        // A node of another size: the largest groups of the split's first size that fit.
        node_split.clear();
        for (int left = static_cast<int>(node.gpus.size()); left > 0;) {
          int part = std::min(split.front(), HighestPowerOfTwo(left));
          while (by_size.count(part) == 0 && part > 1) part /= 2;
          node_split.push_back(part);
          left -= part;
        }
      }
      std::vector<std::vector<std::string>> placed = PlaceOnNode(node, node_split);
      for (size_t i = 0; i < placed.size(); ++i) {
        PlannedGroup g;
        g.id = absl::StrCat("g", c.groups.size());
        g.gpus = std::move(placed[i]);
        g.layout = by_size[node_split[i]].layout;
        g.max_inflight = options.max_inflight;
        g.scheduling = options.scheduling;
        g.max_batch = options.max_batch;
        c.groups.push_back(std::move(g));
      }
    }
    candidates.push_back(std::move(c));
  }
  if (by_size.count(2 * node_max) > 0 && topology.nodes.size() % 2 == 0) {
    Candidate c;
    c.name = absl::StrCat(2 * node_max, " per node pair");
    for (size_t n = 0; n + 1 < topology.nodes.size(); n += 2) {
      PlannedGroup g;
      g.id = absl::StrCat("g", c.groups.size());
      for (size_t k = n; k <= n + 1; ++k) {
        for (const GpuDevice& gpu : topology.nodes[k].gpus) {
          g.gpus.push_back(absl::StrCat(topology.nodes[k].name, ":", gpu.index));
        }
      }
      g.layout = by_size[2 * node_max].layout;
      g.max_inflight = options.max_inflight;
      g.scheduling = options.scheduling;
      g.max_batch = options.max_batch;
      c.groups.push_back(std::move(g));
    }
    candidates.push_back(std::move(c));
  }

  SimOptions sim;
  sim.num_requests = options.sim_requests;
  sim.rate_per_s = plan.workload.arrival_rate_per_s;
  sim.seed = options.seed;
  sim.deadline_factor = options.deadline_factor;
  sim.trace = options.trace;
  sim.slo_factors = {workload.slo_factor};
  size_t best = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    std::unique_ptr<SimPlacer> placer = make_placer();
    ASSIGN_OR_RETURN(SimResult r, Simulate(model, cost, candidates[i].groups, plan.workload,
                                           plan.reference_ms, *placer, sim));
    plan.candidates.push_back({candidates[i].name, r.slo_attainment[0], r.p99_ms});
    const CandidateScore& b = plan.candidates[best];
    const CandidateScore& c = plan.candidates.back();
    if (c.slo_attainment > b.slo_attainment + 1e-9 ||
        (c.slo_attainment > b.slo_attainment - 1e-9 && c.p99_ms < b.p99_ms)) {
      best = i;
    }
  }
  plan.groups = candidates[best].groups;
  std::set<int> used_sizes;
  for (const PlannedGroup& g : plan.groups) used_sizes.insert(g.layout.size());
  for (int s : used_sizes) plan.reasons.push_back(by_size[s].reason);
  plan.reasons.push_back(absl::StrFormat(
      "split %s: %.1f%% of simulated requests within %.2fx isolated (%s) latency at %.2f req/s "
      "(best of %d candidate splits)",
      candidates[best].name, 100 * plan.candidates[best].slo_attainment, workload.slo_factor,
      SloReferenceName(options.slo_reference), plan.workload.arrival_rate_per_s,
      static_cast<int>(candidates.size())));
  std::stable_sort(plan.candidates.begin(), plan.candidates.end(),
                   [](const CandidateScore& a, const CandidateScore& b) {
                     return a.slo_attainment > b.slo_attainment + 1e-9 ||
                            (a.slo_attainment > b.slo_attainment - 1e-9 && a.p99_ms < b.p99_ms);
                   });
  return plan;
}

nlohmann::json Plan::ToJson() const {
  nlohmann::json json;
  json["groups"] = nlohmann::json::array();
  for (const PlannedGroup& g : groups) {
    json["groups"].push_back(
        {{"id", g.id},
         {"gpus", g.gpus},
         {"layout",
          {{"cfg", g.layout.cfg}, {"ring", g.layout.ring}, {"ulysses", g.layout.ulysses}}},
         {"name", g.layout.ToString()},
         {"ulysses_link", LinkClassName(g.layout.ulysses_link)},
         {"ring_link", LinkClassName(g.layout.ring_link)},
         {"max_inflight", g.max_inflight},
         {"scheduling", GroupSchedulingName(g.scheduling)}});
  }
  json["reasons"] = reasons;
  json["arrival_rate_per_s"] = workload.arrival_rate_per_s;
  json["slo_factor"] = workload.slo_factor;
  nlohmann::json refs = nlohmann::json::object();
  for (size_t c = 0; c < workload.classes.size() && c < reference_ms.size(); ++c) {
    refs[workload.classes[c].name] = reference_ms[c];
  }
  json["isolated_latency_ms"] = refs;
  json["candidates"] = nlohmann::json::array();
  for (const CandidateScore& c : candidates) {
    json["candidates"].push_back(
        {{"split", c.split}, {"slo_attainment", c.slo_attainment}, {"p99_ms", c.p99_ms}});
  }
  return json;
}

std::string Plan::ToText() const {
  std::string text = absl::StrCat(groups.size(), " denoiser groups:\n");
  for (const PlannedGroup& g : groups) {
    absl::StrAppend(&text, "  ", g.id, "  ", g.layout.ToString(), "  [", absl::StrJoin(g.gpus, " "),
                    "]\n");
  }
  absl::StrAppend(&text, "why:\n");
  for (const std::string& r : reasons) absl::StrAppend(&text, "  - ", r, "\n");
  absl::StrAppend(&text, "isolated latency per class (SLO unit):\n");
  for (size_t c = 0; c < workload.classes.size() && c < reference_ms.size(); ++c) {
    absl::StrAppendFormat(&text, "  %-12s %8.0f ms\n", workload.classes[c].name, reference_ms[c]);
  }
  absl::StrAppend(&text, "candidate splits (simulated):\n");
  for (const CandidateScore& c : candidates) {
    absl::StrAppendFormat(&text, "  %-28s %5.1f%% within SLO  p99 %8.0f ms\n", c.split,
                          100 * c.slo_attainment, c.p99_ms);
  }
  return text;
}

}  // namespace dgrid::planner
