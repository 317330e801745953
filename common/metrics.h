// Prometheus metrics for every dgrid process: a small registry of counters, gauges and histograms,
// its text exposition (format 0.0.4), and an HTTP server for GET /metrics.
//
//   metrics::Counter* done = metrics::Registry::Global().GetCounter(
//       "dgrid_requests_total", "RPCs answered, by stage, method and gRPC code",
//       {{"stage", "encoder"}, {"method", "Encode"}, {"code", "OK"}});
//   done->Increment();
//
// Names follow Prometheus conventions: `_total` for counters, base units (`_seconds`, `_bytes`).
// A family (one name) has one type, one help text and, for histograms, one set of bucket bounds;
// asking for a name with another type is a programming error and returns a shared dummy instead of
// crashing (the mismatch is logged once).
//
// Ownership and threads: the registry owns every metric; pointers it returns stay valid for the
// registry's lifetime (Global() lives until exit), so hot paths look a metric up once and keep the
// pointer. Every method of every class here may be called from any thread. Counters and gauges are
// lock-free; a histogram observation takes a short per-histogram lock.
#ifndef DGRID_COMMON_METRICS_H_
#define DGRID_COMMON_METRICS_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace httplib {
class Server;
}

namespace dgrid::metrics {

// Label name -> value, e.g. {{"stage", "decoder"}}. Order does not matter (kept sorted).
using Labels = std::map<std::string, std::string>;

class Counter {
 public:
  // `amount` must be >= 0 (negative amounts are ignored: counters only go up).
  void Increment(double amount = 1);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double amount);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `bounds`: upper bounds of the buckets, ascending; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  void ObserveDuration(absl::Duration d) { Observe(absl::ToDoubleSeconds(d)); }

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // Per bound, then +Inf (== count).
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mutex_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mutex_);  // Per bucket (not cumulative), + Inf.
  double sum_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Bucket bounds for request-scale durations: 5 ms to 10 minutes (diffusion requests run long).
const std::vector<double>& DurationBuckets();
// Bucket bounds for per-step durations: 1 ms to 60 s.
const std::vector<double>& StepBuckets();

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The process-wide registry that /metrics serves.
  static Registry& Global();

  // Returns the metric of `name` with `labels`, creating the family and the series on first use.
  Counter* GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge* GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram* GetHistogram(const std::string& name, const std::string& help, const Labels& labels,
                          const std::vector<double>& bounds = DurationBuckets());

  // A gauge whose value `read` computes at scrape time (queue depth, GPU memory). `read` runs on
  // the scraping thread and must be cheap and thread-safe. Returns an id for RemoveCallbackGauge,
  // which a caller must call before anything `read` uses is destroyed.
  int AddCallbackGauge(const std::string& name, const std::string& help, const Labels& labels,
                       std::function<double()> read);
  void RemoveCallbackGauge(int id);

  // The Prometheus text exposition format 0.0.4 of every family, sorted by name.
  std::string Exposition() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    Type type;
    std::string help;
    std::vector<double> bounds;  // Histograms.
    std::map<Labels, std::unique_ptr<Counter>> counters;
    std::map<Labels, std::unique_ptr<Gauge>> gauges;
    std::map<Labels, std::unique_ptr<Histogram>> histograms;
    std::map<int, std::pair<Labels, std::function<double()>>> callbacks;
  };
  // The family `name`, created with `type` when new; nullptr when it exists with another type.
  Family* FamilyLocked(const std::string& name, const std::string& help, Type type)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  mutable absl::Mutex mutex_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mutex_);
  int next_callback_id_ ABSL_GUARDED_BY(mutex_) = 1;
};

// Removes a callback gauge when it goes out of scope.
class ScopedCallbackGauge {
 public:
  ScopedCallbackGauge(Registry& registry, const std::string& name, const std::string& help,
                      const Labels& labels, std::function<double()> read)
      : registry_(registry), id_(registry.AddCallbackGauge(name, help, labels, std::move(read))) {}
  ~ScopedCallbackGauge() { registry_.RemoveCallbackGauge(id_); }
  ScopedCallbackGauge(const ScopedCallbackGauge&) = delete;
  ScopedCallbackGauge& operator=(const ScopedCallbackGauge&) = delete;

 private:
  Registry& registry_;
  const int id_;
};

// Serves GET /metrics (text/plain; version=0.0.4) of a registry over plain HTTP on a background
// thread. Plain text on purpose: metrics carry no secrets and Prometheus scrapes inside the
// cluster network (NetworkPolicies restrict who may).
class MetricsServer {
 public:
  // Binds host:port (port 0: a free one). `registry` is not owned and must outlive the server.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host, int port,
                                                              Registry* registry);
  ~MetricsServer();
  int port() const { return port_; }
  // Stops serving and joins the thread. Idempotent.
  void Stop();

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

// Adds `bytes` to dgrid_transfer_bytes_total{transport, direction}: every TensorChannel and the
// inline path count what they move ("inline" / "ucx"; "sent" / "received").
void CountTransferBytes(const std::string& transport, const std::string& direction, double bytes);

// Gauges dgrid_gpu_memory_bytes{gpu, kind="used"|"total"} read through NVML at scrape time, when
// libnvidia-ml can be loaded (it is dlopen()ed: no build dependency, and nothing on CPU hosts).
// Returns whether NVML was found. Call once per process; later calls do nothing.
bool RegisterGpuMemoryGauges(Registry& registry);

}  // namespace dgrid::metrics

#endif  // DGRID_COMMON_METRICS_H_
