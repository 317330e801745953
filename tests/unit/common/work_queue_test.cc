#include "common/work_queue.h"

#include <atomic>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"

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

}  // namespace
}  // namespace dgrid
