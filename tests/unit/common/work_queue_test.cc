#include "common/work_queue.h"

#include <atomic>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "common/status.h"

namespace dgrid {
namespace {

using ::testing::HasSubstr;

TEST(WorkQueue, RunsItemsAndReportsPositions) {
  WorkQueue queue({"test", 1, 4});
  absl::Notification release;
  absl::Notification first_started;
  std::atomic<int> done{0};
  ASSERT_TRUE(queue
                  .Enqueue(
                      "a", absl::InfiniteFuture(),
                      [&](const CancellationToken&) {
                        first_started.Notify();
                        release.WaitForNotification();
                        ++done;
                      },
                      nullptr)
                  .ok());
  first_started.WaitForNotification();
  for (const char* id : {"b", "c"}) {
    ASSERT_TRUE(
        queue
            .Enqueue(
                id, absl::InfiniteFuture(), [&](const CancellationToken&) { ++done; }, nullptr)
            .ok());
  }
  EXPECT_EQ(queue.Position("a"), -1);  // running
  EXPECT_EQ(queue.Position("b"), 0);
  EXPECT_EQ(queue.Position("c"), 1);
  EXPECT_EQ(queue.running(), 1);
  EXPECT_EQ(queue.Enqueue("b", absl::InfiniteFuture(), nullptr, nullptr).code(),
            absl::StatusCode::kAlreadyExists);
  release.Notify();
  queue.Shutdown(absl::Seconds(10));
  EXPECT_EQ(done.load(), 3);
}

TEST(WorkQueue, FullQueueIsResourceExhaustedAtOnce) {
  WorkQueue queue({"test", 1, 1});
  absl::Notification release, started;
  ASSERT_TRUE(queue
                  .Enqueue(
                      "running", absl::InfiniteFuture(),
                      [&](const CancellationToken&) {
                        started.Notify();
                        release.WaitForNotification();
                      },
                      nullptr)
                  .ok());
  started.WaitForNotification();
  ASSERT_TRUE(queue
                  .Enqueue(
                      "waiting", absl::InfiniteFuture(), [](const CancellationToken&) {}, nullptr)
                  .ok());
  const absl::Status full = queue.Enqueue(
      "one-too-many", absl::InfiniteFuture(), [](const CancellationToken&) {}, nullptr);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()), HasSubstr("queue is full"));
  EXPECT_TRUE(IsQueueFull(full));  // back-pressure, not a failure of the request
  release.Notify();
}

TEST(WorkQueue, CancelQueuedDropsAndCancelRunningFlags) {
  WorkQueue queue({"test", 1, 4});
  absl::Notification started;
  std::atomic<bool> saw_cancel{false};
  ASSERT_TRUE(queue
                  .Enqueue(
                      "long", absl::InfiniteFuture(),
                      [&](const CancellationToken& token) {
                        started.Notify();
                        while (token.Check().ok()) absl::SleepFor(absl::Milliseconds(1));
                        saw_cancel = token.Check().code() == absl::StatusCode::kCancelled;
                      },
                      nullptr)
                  .ok());
  started.WaitForNotification();
  absl::Status dropped_with;
  std::atomic<bool> ran{false};
  ASSERT_TRUE(queue
                  .Enqueue(
                      "queued", absl::InfiniteFuture(),
                      [&](const CancellationToken&) { ran = true; },
                      [&](const absl::Status& s) { dropped_with = s; })
                  .ok());
  ASSERT_TRUE(queue.Cancel("queued").ok());
  EXPECT_EQ(dropped_with.code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(queue.Cancel("long").ok());
  EXPECT_EQ(queue.Cancel("nobody").code(), absl::StatusCode::kNotFound);
  queue.Shutdown(absl::Seconds(10));
  EXPECT_TRUE(saw_cancel.load());
  EXPECT_FALSE(ran.load());
}

TEST(WorkQueue, DeadlinesExpireWhileQueuedAndWhileRunning) {
  WorkQueue queue({"test", 1, 4});
  absl::Notification release, started;
  ASSERT_TRUE(queue
                  .Enqueue(
                      "blocker", absl::InfiniteFuture(),
                      [&](const CancellationToken&) {
                        started.Notify();
                        release.WaitForNotification();
                      },
                      nullptr)
                  .ok());
  started.WaitForNotification();
  absl::Notification dropped;
  absl::Status dropped_with;
  ASSERT_TRUE(queue
                  .Enqueue(
                      "short", absl::Now() + absl::Milliseconds(50),
                      [](const CancellationToken&) {},
                      [&](const absl::Status& s) {
                        dropped_with = s;
                        dropped.Notify();
                      })
                  .ok());
  ASSERT_TRUE(dropped.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(dropped_with.code(), absl::StatusCode::kDeadlineExceeded);
  release.Notify();

  CancellationToken token(absl::Now() - absl::Seconds(1));
  EXPECT_EQ(token.Check().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(WorkQueue, ShutdownDrainsThenRefusesAndDropsTheRest) {
  auto queue = std::make_unique<WorkQueue>(WorkQueue::Options{"test", 1, 8});
  absl::Notification started;
  std::atomic<int> done{0};
  ASSERT_TRUE(queue
                  ->Enqueue(
                      "stuck", absl::InfiniteFuture(),
                      [&](const CancellationToken& token) {
                        started.Notify();
                        while (token.Check().ok()) absl::SleepFor(absl::Milliseconds(1));
                      },
                      nullptr)
                  .ok());
  started.WaitForNotification();
  std::vector<absl::Status> dropped;
  absl::Mutex mu;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(queue
                    ->Enqueue(
                        absl::StrCat("q", i), absl::InfiniteFuture(),
                        [&](const CancellationToken&) { ++done; },
                        [&](const absl::Status& s) {
                          absl::MutexLock lock(&mu);
                          dropped.push_back(s);
                        })
                    .ok());
  }
  queue->Shutdown(absl::Milliseconds(100));  // "stuck" never finishes by itself
  EXPECT_EQ(dropped.size(), 3u);
  for (const auto& s : dropped) EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(queue->Enqueue("late", absl::InfiniteFuture(), nullptr, nullptr).code(),
            absl::StatusCode::kUnavailable);
  queue->Shutdown(absl::ZeroDuration());  // idempotent
}

TEST(WorkQueue, EarliestDeadlineFirstOrdersTheQueueAndPreemptsBetweenSteps) {
  WorkQueue::Options options{"test", 1, 8};
  options.earliest_deadline_first = true;
  WorkQueue queue(options);
  const absl::Time now = absl::Now();
  std::vector<std::string> order;  // written by the worker thread only
  absl::Notification long_started, go_on;
  // The running item takes preempting work at each of its "steps", as the sampler does.
  ASSERT_TRUE(queue
                  .Enqueue(
                      "long", now + absl::Hours(2),
                      [&](const CancellationToken& token) {
                        order.push_back("long:start");
                        long_started.Notify();
                        go_on.WaitForNotification();
                        // Asking takes nothing: the queue still holds both.
                        EXPECT_TRUE(queue.HasEarlierThan(token.deadline()));
                        EXPECT_TRUE(queue.HasEarlierThan(token.deadline()));
                        EXPECT_FALSE(queue.HasEarlierThan(now + absl::Minutes(10)));
                        for (int step = 0; step < 3; ++step) {
                          while (std::function<void()> first =
                                     queue.TakeEarlierThan(token.deadline())) {
                            first();
                          }
                        }
                        order.push_back("long:end");
                      },
                      nullptr)
                  .ok());
  long_started.WaitForNotification();
  auto record = [&](const char* id) {
    return [&order, id](const CancellationToken&) { order.push_back(id); };
  };
  ASSERT_TRUE(queue.Enqueue("later", now + absl::Hours(3), record("later"), nullptr).ok());
  ASSERT_TRUE(queue.Enqueue("none", absl::InfiniteFuture(), record("none"), nullptr).ok());
  ASSERT_TRUE(queue.Enqueue("soon", now + absl::Hours(1), record("soon"), nullptr).ok());
  ASSERT_TRUE(queue.Enqueue("sooner", now + absl::Minutes(30), record("sooner"), nullptr).ok());
  // Positions follow deadlines, not arrival.
  EXPECT_EQ(queue.Position("sooner"), 0);
  EXPECT_EQ(queue.Position("soon"), 1);
  EXPECT_EQ(queue.Position("later"), 2);
  EXPECT_EQ(queue.Position("none"), 3);
  go_on.Notify();
  queue.Shutdown(absl::Seconds(10));
  // The two due before "long" run inside it (earliest first); the rest after it, by deadline.
  EXPECT_THAT(order,
              ::testing::ElementsAre("long:start", "sooner", "soon", "long:end", "later", "none"));
}

TEST(WorkQueue, FifoQueueNeverPreempts) {
  WorkQueue queue({"test", 1, 8});
  const absl::Time now = absl::Now();
  absl::Notification started, go_on;
  std::atomic<int> taken{0};
  ASSERT_TRUE(queue
                  .Enqueue(
                      "long", now + absl::Hours(5),
                      [&](const CancellationToken& token) {
                        started.Notify();
                        go_on.WaitForNotification();
                        // "a", next in arrival order, is due before the running item, but
                        // an arrival-order queue never preempts.
                        if (queue.HasEarlierThan(token.deadline())) ++taken;
                        if (queue.TakeEarlierThan(token.deadline())) ++taken;
                      },
                      nullptr)
                  .ok());
  started.WaitForNotification();
  ASSERT_TRUE(queue.Enqueue("a", now + absl::Hours(3), nullptr, nullptr).ok());
  ASSERT_TRUE(queue.Enqueue("b", now + absl::Hours(1), nullptr, nullptr).ok());
  EXPECT_EQ(queue.Position("a"), 0);
  EXPECT_EQ(queue.Position("b"), 1);
  go_on.Notify();
  queue.Shutdown(absl::Seconds(10));
  EXPECT_EQ(taken.load(), 0);
}

// On a GPU: a real out-of-memory from the CUDA caching allocator (a 1 PiB tensor), not a thrown
// stand-in, ends that item alone with RESOURCE_EXHAUSTED, and the next item uses the GPU.
TEST(WorkQueue, ARealCudaOutOfMemoryEndsOnlyThatItem) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  WorkQueue queue({"test", 1, 8});
  absl::Notification oom_ended, small_ran;
  absl::Status oom_status;
  double small_sum = 0;
  ASSERT_TRUE(queue
                  .Enqueue(
                      "huge", absl::InfiniteFuture(),
                      [](const CancellationToken&) {
                        at::Tensor t =
                            at::empty({int64_t{1} << 50},
                                      at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
                        ADD_FAILURE() << "a 1 PiB CUDA tensor was allocated: " << t.numel();
                      },
                      [&](const absl::Status& s) {
                        oom_status = s;
                        oom_ended.Notify();
                      })
                  .ok());
  ASSERT_TRUE(
      queue
          .Enqueue(
              "small", absl::InfiniteFuture(),
              [&](const CancellationToken&) {
                small_sum =
                    at::ones({1 << 20}, at::TensorOptions().device(at::kCUDA)).sum().item<double>();
                small_ran.Notify();
              },
              [](const absl::Status& s) { ADD_FAILURE() << "small ended: " << s; })
          .ok());
  ASSERT_TRUE(oom_ended.WaitForNotificationWithTimeout(absl::Seconds(60)));
  ASSERT_TRUE(small_ran.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(oom_status.code(), absl::StatusCode::kResourceExhausted) << oom_status;
  EXPECT_THAT(std::string(oom_status.message()), HasSubstr("out of memory"));
  EXPECT_EQ(small_sum, 1 << 20);
  queue.Shutdown(absl::Seconds(10));
}

TEST(WorkQueue, AnItemThatThrowsEndsWithItsStatusAndTheQueueKeepsServing) {
  WorkQueue queue({"test", 1, 8});
  absl::Mutex mu;
  std::vector<std::pair<std::string, absl::Status>> ended;  // guarded by mu
  auto record = [&](std::string id) {
    return [&, id](const absl::Status& s) {
      absl::MutexLock lock(&mu);
      ended.emplace_back(id, s);
    };
  };
  ASSERT_TRUE(queue
                  .Enqueue(
                      "torch-oom", absl::InfiniteFuture(),
                      [](const CancellationToken&) {
                        TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory (test)");
                      },
                      record("torch-oom"))
                  .ok());
  ASSERT_TRUE(queue
                  .Enqueue(
                      "host-oom", absl::InfiniteFuture(),
                      [](const CancellationToken&) { throw std::bad_alloc(); }, record("host-oom"))
                  .ok());
  ASSERT_TRUE(queue
                  .Enqueue(
                      "bug", absl::InfiniteFuture(),
                      [](const CancellationToken&) { throw std::logic_error("a model bug"); },
                      record("bug"))
                  .ok());
  // EnqueueForResult: the exception of its computation reaches `done`, once.
  absl::Notification result_seen;
  absl::StatusOr<int> result;
  ASSERT_TRUE((EnqueueForResult<int>(
                   queue, "step", absl::InfiniteFuture(), 3,
                   [](int, const CancellationToken&) -> absl::StatusOr<int> {
                     TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory (step)");
                     return 0;
                   },
                   [&](absl::StatusOr<int> r) {
                     result = std::move(r);
                     result_seen.Notify();
                   }))
                  .ok());
  // Still serving.
  absl::Notification later_ran;
  ASSERT_TRUE(queue
                  .Enqueue(
                      "later", absl::InfiniteFuture(),
                      [&](const CancellationToken&) { later_ran.Notify(); }, record("later"))
                  .ok());
  ASSERT_TRUE(later_ran.WaitForNotificationWithTimeout(absl::Seconds(60)));
  ASSERT_TRUE(result_seen.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("CUDA out of memory (step)"));
  queue.Shutdown(absl::Seconds(10));
  absl::MutexLock lock(&mu);
  ASSERT_EQ(ended.size(), 3u);  // "later" ended normally: its dropped is not called
  EXPECT_EQ(ended[0].first, "torch-oom");
  EXPECT_EQ(ended[0].second.code(), absl::StatusCode::kResourceExhausted) << ended[0].second;
  EXPECT_THAT(ended[0].second.message(), HasSubstr("CUDA out of memory (test)"));
  EXPECT_EQ(ended[1].first, "host-oom");
  EXPECT_EQ(ended[1].second.code(), absl::StatusCode::kResourceExhausted) << ended[1].second;
  EXPECT_EQ(ended[2].first, "bug");
  EXPECT_EQ(ended[2].second.code(), absl::StatusCode::kInternal) << ended[2].second;
  EXPECT_THAT(ended[2].second.message(), HasSubstr("a model bug"));
  EXPECT_THAT(ended[2].second.message(), HasSubstr("test request bug"));
}

// A client that retries at once with the same id, from inside the answer of the first call (as a
// stage's reply reaches the orchestrator before the worker returns): the queue takes the retry,
// the first item's end does not forget it, and Cancel reaches the retry, not the answered item.
TEST(WorkQueue, AnAnsweredItemsIdCanBeEnqueuedAgainAtOnce) {
  WorkQueue queue({"test", 2, 8});
  absl::Notification retry_started, release_retry;
  absl::Status again;  // written by the first item's worker
  std::atomic<bool> retry_cancelled{false};
  auto retry = [&](const CancellationToken& token) {
    retry_started.Notify();
    release_retry.WaitForNotification();
    retry_cancelled = token.cancelled();
  };
  ASSERT_TRUE((EnqueueForResult<int>(
                   queue, "r", absl::InfiniteFuture(), 1,
                   [](int x, const CancellationToken&) -> absl::StatusOr<int> { return x; },
                   [&](absl::StatusOr<int> r) {
                     EXPECT_TRUE(r.ok());
                     again = queue.Enqueue(
                         "r", absl::InfiniteFuture(), retry,
                         [&](const absl::Status& s) { ADD_FAILURE() << "retry dropped: " << s; });
                     // The second worker runs the retry while this item has not returned yet.
                     EXPECT_TRUE(retry_started.WaitForNotificationWithTimeout(absl::Seconds(60)));
                   }))
                  .ok());
  ASSERT_TRUE(retry_started.WaitForNotificationWithTimeout(absl::Seconds(60)));
  // Another item runs on the first item's worker, so that item has returned and left running_;
  // the retry is still running: the same id is refused now, and Cancel flags the retry.
  absl::Notification other_ran;
  ASSERT_TRUE(queue
                  .Enqueue(
                      "other", absl::InfiniteFuture(),
                      [&](const CancellationToken&) { other_ran.Notify(); }, nullptr)
                  .ok());
  ASSERT_TRUE(other_ran.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_TRUE(again.ok()) << again;
  EXPECT_EQ(queue.Enqueue("r", absl::InfiniteFuture(), nullptr, nullptr).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(queue.Cancel("r").ok());
  release_retry.Notify();
  queue.Shutdown(absl::Seconds(10));
  EXPECT_TRUE(retry_cancelled.load());
  EXPECT_EQ(queue.running(), 0);
}

}  // namespace
}  // namespace dgrid
