#include "common/metrics.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace dgrid::metrics {
namespace {

// C++17 has no atomic<double>::fetch_add.
void AtomicAdd(std::atomic<double>& target, double amount) {
  double old = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(old, old + amount, std::memory_order_relaxed)) {
  }
}

// Exposition-format number: integers without a fraction, +Inf/-Inf/NaN spelled as Prometheus wants.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrCat(static_cast<int64_t>(v));
  // The shortest of %.15g / %.17g that reads back as the same double ("0.1", not
  // "0.10000000000000001").
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.15g", v);
  if (std::strtod(buffer, nullptr) != v) std::snprintf(buffer, sizeof(buffer), "%.17g", v);
  return buffer;
}

// Backslash and newline escaped, as HELP text wants; label values escape double quotes too.
std::string Escape(absl::string_view text, bool quotes) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quotes) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

// `{a="1",b="2"}` with an optional extra label (the histogram's `le`); empty when there are none.
std::string FormatLabels(const Labels& labels, absl::string_view extra_name = "",
                         absl::string_view extra_value = "") {
  if (labels.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [name, value] : labels) {
    absl::StrAppend(&out, first ? "" : ",", name, "=\"", Escape(value, /*quotes=*/true), "\"");
    first = false;
  }
  if (!extra_name.empty()) {
    absl::StrAppend(&out, first ? "" : ",", extra_name, "=\"", extra_value, "\"");
  }
  out += "}";
  return out;
}

// The series of `labels`, made with `args` on first use.
template <typename Metric, typename... Args>
Metric* Series(std::map<Labels, std::unique_ptr<Metric>>& series, const Labels& labels,
               Args&&... args) {
  std::unique_ptr<Metric>& slot = series[labels];
  if (slot == nullptr) slot = std::make_unique<Metric>(std::forward<Args>(args)...);
  return slot.get();
}

// What a lookup with the wrong type gets: a metric that works but is never exported.
template <typename Metric>
Metric* Detached() {
  static Metric* metric = [] {
    if constexpr (std::is_same_v<Metric, Histogram>) {
      return new Histogram({});
    } else {
      return new Metric();
    }
  }();
  return metric;
}

}  // namespace

void Counter::Increment(double amount) {
  if (amount > 0) AtomicAdd(value_, amount);
}

void Gauge::Add(double amount) { AtomicAdd(value_, amount); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  // The first bucket whose upper bound is >= value ("le" is inclusive).
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  absl::MutexLock lock(&mutex_);
  ++counts_[bucket];
  sum_ += value;
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot out;
  out.bounds = bounds_;
  absl::MutexLock lock(&mutex_);
  uint64_t running = 0;
  for (uint64_t c : counts_) {
    running += c;
    out.cumulative.push_back(running);
  }
  out.count = running;
  out.sum = sum_;
  return out;
}

const std::vector<double>& DurationBuckets() {
  static const auto* kBounds = new std::vector<double>{
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
  return *kBounds;
}

const std::vector<double>& StepBuckets() {
  static const auto* kBounds = new std::vector<double>{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return *kBounds;
}

Registry& Registry::Global() {
  static Registry* registry = new Registry();  // Never destroyed: metrics outlive static teardown.
  return *registry;
}

Registry::Family* Registry::FamilyLocked(const std::string& name, const std::string& help,
                                         Type type) {
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    it->second.type = type;
    it->second.help = help;
  } else if (it->second.type != type) {
    DG_LOG_ERROR("", "metric %s requested with two different types; ignoring the second", name);
    return nullptr;
  }
  return &it->second;
}

Counter* Registry::GetCounter(const std::string& name, const std::string& help,
                              const Labels& labels) {
  absl::MutexLock lock(&mutex_);
  Family* family = FamilyLocked(name, help, Type::kCounter);
  return family != nullptr ? Series(family->counters, labels) : Detached<Counter>();
}

Gauge* Registry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  absl::MutexLock lock(&mutex_);
  Family* family = FamilyLocked(name, help, Type::kGauge);
  return family != nullptr ? Series(family->gauges, labels) : Detached<Gauge>();
}

Histogram* Registry::GetHistogram(const std::string& name, const std::string& help,
                                  const Labels& labels, const std::vector<double>& bounds) {
  absl::MutexLock lock(&mutex_);
  Family* family = FamilyLocked(name, help, Type::kHistogram);
  if (family == nullptr) return Detached<Histogram>();
  // One family, one set of buckets: the first caller's bounds win, so series stay aggregatable.
  if (family->bounds.empty()) family->bounds = bounds;
  return Series(family->histograms, labels, family->bounds);
}

int Registry::AddCallbackGauge(const std::string& name, const std::string& help,
                               const Labels& labels, std::function<double()> read) {
  absl::MutexLock lock(&mutex_);
  Family* family = FamilyLocked(name, help, Type::kGauge);
  if (family == nullptr) return 0;
  const int id = next_callback_id_++;
  family->callbacks[id] = {labels, std::move(read)};
  return id;
}

void Registry::RemoveCallbackGauge(int id) {
  absl::MutexLock lock(&mutex_);
  for (auto& [name, family] : families_) family.callbacks.erase(id);
}

std::string Registry::Exposition() const {
  std::string out;
  // Callbacks run under the registry lock, which keeps RemoveCallbackGauge from returning while
  // one runs; they must not call back into the registry.
  absl::MutexLock lock(&mutex_);
  for (const auto& [name, family] : families_) {
    const char* type = family.type == Type::kCounter ? "counter"
                       : family.type == Type::kGauge ? "gauge"
                                                     : "histogram";
    absl::StrAppend(&out, "# HELP ", name, " ", Escape(family.help, /*quotes=*/false), "\n# TYPE ",
                    name, " ", type, "\n");
    for (const auto& [labels, counter] : family.counters) {
      absl::StrAppend(&out, name, FormatLabels(labels), " ", FormatValue(counter->value()), "\n");
    }
    for (const auto& [labels, gauge] : family.gauges) {
      absl::StrAppend(&out, name, FormatLabels(labels), " ", FormatValue(gauge->value()), "\n");
    }
    for (const auto& [id, callback] : family.callbacks) {
      absl::StrAppend(&out, name, FormatLabels(callback.first), " ", FormatValue(callback.second()),
                      "\n");
    }
    for (const auto& [labels, histogram] : family.histograms) {
      const Histogram::Snapshot s = histogram->Read();
      for (size_t i = 0; i < s.cumulative.size(); ++i) {
        const std::string le = i < s.bounds.size() ? FormatValue(s.bounds[i]) : "+Inf";
        absl::StrAppend(&out, name, "_bucket", FormatLabels(labels, "le", le), " ", s.cumulative[i],
                        "\n");
      }
      absl::StrAppend(&out, name, "_sum", FormatLabels(labels), " ", FormatValue(s.sum), "\n");
      absl::StrAppend(&out, name, "_count", FormatLabels(labels), " ", s.count, "\n");
    }
  }
  return out;
}

void CountTransferBytes(const std::string& transport, const std::string& direction, double bytes) {
  Registry::Global()
      .GetCounter("dgrid_transfer_bytes_total", "Tensor bytes moved between stages",
                  {{"transport", transport}, {"direction", direction}})
      ->Increment(bytes);
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host,
                                                                    int port, Registry* registry) {
  auto out = std::unique_ptr<MetricsServer>(new MetricsServer());
  out->server_ = std::make_unique<httplib::Server>();
  out->server_->Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry->Exposition(), "text/plain; version=0.0.4; charset=utf-8");
  });
  int bound = port;
  if (port == 0) {
    bound = out->server_->bind_to_any_port(host);
  } else if (!out->server_->bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve /metrics on ", host, ":", port));
  }
  out->port_ = bound;
  httplib::Server* server = out->server_.get();
  out->thread_ = std::thread([server] { server->listen_after_bind(); });
  DG_LOG_INFO("", "metrics on http://%s:%d/metrics", host, bound);
  return out;
}

MetricsServer::~MetricsServer() { Stop(); }

void MetricsServer::Stop() {
  if (server_ == nullptr) return;
  server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

}  // namespace dgrid::metrics
