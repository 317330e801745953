// dgrid-bench-batching: closed-loop load on one denoiser engine (the one a dgrid-denoiser process
// serves, without the RPC), with and without continuous batching at step boundaries (--max-batch;
// services/denoiser/step_batcher.h). `--clients` threads each send a same-size request, wait for
// its latents, and send the next, until `--requests` have finished; for each --max-batch value the
// report gives throughput and latency percentiles. Writes a JSON report and prints a table.
//
//   build/bench/dgrid-bench-batching --model models/dgrid-shapes --clients 32 --requests 320
//       --max-batch 1,8,32 --card "2-core CPU VM" --commit $(git rev-parse --short HEAD)
//       --out bench/results/DATE-cpu-batching.json
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "bench/bench_main.h"
#include "bench/report.h"
#include "common/config.h"
#include "common/model_limits.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "services/denoiser/denoiser_engine.h"
#include "services/denoiser/sampler.h"

namespace dgrid::bench {
namespace {

struct Measured {
  int max_batch = 1;
  double seconds = 0;
  std::vector<double> latencies_ms;
  int errors = 0;
};

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t rank =
      static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(values.size()))) - 1;
  return values[std::min(rank, values.size() - 1)];
}

// One closed-loop run of `requests` requests from `clients` threads on a fresh engine.
absl::Status RunSetting(const DenoiserEngineOptions& options, const ModelLimits& limits,
                        int clients, int requests, int steps, int width, int height,
                        Measured& setting) {
  DenoiserEngineOptions o = options;
  o.max_batch = setting.max_batch;
  o.max_queued = clients;
  ASSIGN_OR_RETURN(std::unique_ptr<DenoiserEngine> engine, DenoiserEngine::Create(o));
  RETURN_IF_ERROR(engine->Warmup({{width, height}}));
  // The model's embedding shapes, from its warm-up request (zeros); each request gets its own.
  ASSIGN_OR_RETURN(const DenoiseInput shapes,
                   engine->family_denoiser().WarmupInput(width, height, limits));
  absl::Mutex mutex;
  int next = 0;
  absl::Status failure;
  auto client = [&](int c) {
    while (true) {
      int index;
      {
        absl::MutexLock lock(&mutex);
        if (next >= requests) return;
        index = next++;
      }
      DenoiseInput input = shapes;
      input.request_id = absl::StrCat("bench-", setting.max_batch, "-", index);
      input.num_inference_steps = steps;
      input.seed = static_cast<uint64_t>(index);
      // Different prompts: different (random) embeddings of the model's shapes.
      uint64_t seed = 1000 + static_cast<uint64_t>(index) * 16;
      for (auto& [name, tensor] : input.positive) {
        tensor = flux::SeededNoise(tensor.sizes(), seed++, at::kFloat);
      }
      absl::Notification done;
      absl::Status status;
      const absl::Time start = absl::Now();
      const absl::Status queued =
          engine->Enqueue(std::move(input), nullptr, [&](absl::StatusOr<at::Tensor> result) {
            status = result.status();
            done.Notify();
          });
      if (queued.ok()) done.WaitForNotification();
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
      absl::MutexLock lock(&mutex);
      if (!queued.ok() || !status.ok()) {
        ++setting.errors;
        if (failure.ok()) failure = queued.ok() ? status : queued;
        continue;
      }
      setting.latencies_ms.push_back(ms);
    }
    (void)c;
  };
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) threads.emplace_back(client, c);
  for (std::thread& t : threads) t.join();
  setting.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (!failure.ok()) {
    return absl::Status(failure.code(),
                        absl::StrCat("max_batch ", setting.max_batch, ": ", setting.errors,
                                     " requests failed, first: ", failure.message()));
  }
  return absl::OkStatus();
}

absl::Status Run(const Config& config) {
  DenoiserEngineOptions options;
  ASSIGN_OR_RETURN(options.model_path, config.GetString("model"));
  ASSIGN_OR_RETURN(options.load.device, config.GetString("device"));
  options.load.floating_dtype = "float32";
  ASSIGN_OR_RETURN(double wait_ms, config.GetDouble("batch_wait_ms"));
  options.batch_wait = absl::Milliseconds(wait_ms);
  ASSIGN_OR_RETURN(ModelLimits limits, ReadModelLimits(options.model_path));
  ASSIGN_OR_RETURN(int64_t clients, config.GetInt("clients"));
  ASSIGN_OR_RETURN(int64_t requests, config.GetInt("requests"));
  ASSIGN_OR_RETURN(int64_t steps, config.GetInt("steps"));
  ASSIGN_OR_RETURN(int64_t width, config.GetInt("width"));
  ASSIGN_OR_RETURN(int64_t height, config.GetInt("height"));
  ASSIGN_OR_RETURN(std::string batches, config.GetString("max_batch"));
  std::vector<Measured> settings;
  for (absl::string_view b : absl::StrSplit(batches, ',')) {
    Measured s;
    if (!absl::SimpleAtoi(b, &s.max_batch) || s.max_batch < 1) {
      return InvalidArgument("--max-batch: '", b, "' is not a batch size >= 1");
    }
    settings.push_back(s);
  }
  for (Measured& s : settings) {
    std::fprintf(stderr, "max_batch %d: %lld requests from %lld clients ...\n", s.max_batch,
                 static_cast<long long>(requests), static_cast<long long>(clients));
    RETURN_IF_ERROR(RunSetting(options, limits, static_cast<int>(clients),
                               static_cast<int>(requests), static_cast<int>(steps),
                               static_cast<int>(width), static_cast<int>(height), s));
  }
  nlohmann::json report;
  ASSIGN_OR_RETURN(report["card"], config.GetString("card"));
  ASSIGN_OR_RETURN(report["commit"], config.GetString("commit"));
  report["date"] = TodayUtc();
  report["tool"] = "dgrid-bench-batching";
  report["command"] = config.GetString("command").value_or("");
  report["config"] = {{"model", options.model_path},
                      {"device", options.load.device},
                      {"dtype", "float32"},
                      {"clients", clients},
                      {"requests", requests},
                      {"steps", steps},
                      {"width", width},
                      {"height", height},
                      {"batch_wait_ms", wait_ms},
                      {"torch_threads", at::get_num_threads()}};
  std::printf("| max_batch | requests/s | p50 ms | p95 ms | p99 ms | vs max_batch %d |\n",
              settings.front().max_batch);
  std::printf("|---|---|---|---|---|---|\n");
  const double base = static_cast<double>(settings.front().latencies_ms.size()) /
                      std::max(1e-9, settings.front().seconds);
  for (const Measured& s : settings) {
    const double rps = static_cast<double>(s.latencies_ms.size()) / std::max(1e-9, s.seconds);
    const double p50 = Percentile(s.latencies_ms, 50), p95 = Percentile(s.latencies_ms, 95),
                 p99 = Percentile(s.latencies_ms, 99);
    std::printf("| %d | %.2f | %.0f | %.0f | %.0f | %.2fx |\n", s.max_batch, rps, p50, p95, p99,
                rps / base);
    report["results"].push_back({{"max_batch", s.max_batch},
                                 {"requests", s.latencies_ms.size()},
                                 {"seconds", s.seconds},
                                 {"requests_per_second", rps},
                                 {"p50_ms", p50},
                                 {"p95_ms", p95},
                                 {"p99_ms", p99},
                                 {"throughput_vs_first", rps / base}});
  }
  ASSIGN_OR_RETURN(std::string out, config.GetString("out"));
  if (!out.empty()) RETURN_IF_ERROR(WriteJsonFile(out, report));
  return absl::OkStatus();
}

}  // namespace
}  // namespace dgrid::bench

int main(int argc, char** argv) {
  dgrid::Config config({
      {"model", dgrid::Setting::kString, "models/dgrid-shapes", "FLUX pipeline folder"},
      {"device", dgrid::Setting::kString, "cpu", "cpu, cuda or cuda:N"},
      {"clients", dgrid::Setting::kInt, "32", "closed-loop client threads", 1, 1024},
      {"requests", dgrid::Setting::kInt, "320", "requests per setting", 1, 1000000},
      {"steps", dgrid::Setting::kInt, "16", "steps per request", 1, 1000},
      {"width", dgrid::Setting::kInt, "64", "image width", 8, 4096},
      {"height", dgrid::Setting::kInt, "64", "image height", 8, 4096},
      {"max_batch", dgrid::Setting::kString, "1,8,32", "the --max-batch values to compare"},
      {"batch_wait_ms", dgrid::Setting::kDouble, "0", "--batch-wait-ms of every setting", 0, 1e5},
      {"card", dgrid::Setting::kString, "", "the machine, in words (for the report)"},
      {"commit", dgrid::Setting::kString, "", "the commit measured (for the report)"},
      {"command", dgrid::Setting::kString, "", "the command line (for the report)"},
      {"out", dgrid::Setting::kString, "", "JSON report path (empty: table only)"},
  });
  return dgrid::bench::BenchMain("dgrid-bench-batching", config, argc, argv,
                                 [](const dgrid::Config& c) { return dgrid::bench::Run(c); });
}
