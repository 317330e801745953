// Time source seam for the orchestrator (heartbeat expiry, queue times, deadlines).
//
// Production code uses RealClock; tests use ManualClock and move time by hand so that heartbeat
// expiry is tested without sleeping. Both are thread-safe.
#ifndef DGRID_ORCHESTRATOR_REGISTRY_CLOCK_H_
#define DGRID_ORCHESTRATOR_REGISTRY_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dgrid::orchestrator {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// absl::Now(). Stateless; one shared instance is enough.
class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  // Process-wide instance, never destroyed.
  static RealClock* Get();
};

// A clock that only moves when told to.
class ManualClock : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24 * 365 * 50))
      : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mutex_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mutex_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mutex_;
  absl::Time now_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_REGISTRY_CLOCK_H_
