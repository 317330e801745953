// UcxChannel in one process: producer and consumer channels each have their own UCP context and
// worker, so every pull crosses a real UCX transport (shared memory or tcp on loopback).
#include "transport/ucx/ucx_channel.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/metrics.h"

namespace dgrid {
namespace {

std::unique_ptr<UcxChannel> MakeChannel(UcxChannelOptions options = {}) {
  auto channel = UcxChannel::Create(options);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return channel.ok() ? *std::move(channel) : nullptr;
}

// Releases travel as active messages, so the producer sees them a moment later.
bool WaitForNoLeases(const UcxChannel& channel) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    if (channel.stats().live_leases == 0 && channel.stats().leased_bytes == 0) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

// One full hand-off between the two channels, so that their connection is wired up both ways
// before a test's own exchange. Tests whose consumer is refused at first contact and then destroyed
// would otherwise close it while the producer's reply endpoint is still in wire-up, which UCX 1.13
// answers with an assertion (docs/transport.md, "Known limitation").
void WireUp(UcxChannel& producer, UcxChannel& consumer) {
  auto ref = producer.Publish(at::ones({1 << 16}));
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_TRUE(consumer.Fetch(*ref, "wire-up").ok());
  consumer.Release(*ref);
  ASSERT_TRUE(WaitForNoLeases(producer));
}

uint64_t Checksum(const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
  return h;
}

TEST(UcxChannel, PullsAboveThresholdAndReleases) {
  auto producer = MakeChannel();
  auto consumer = MakeChannel();
  ASSERT_NE(producer, nullptr);
  ASSERT_NE(consumer, nullptr);
  const at::Tensor tensor = at::randn({3, 257, 129});  // 387 KiB, not a multiple of 8 words
  auto ref = producer->Publish(tensor);
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_EQ(ref->payload_case(), v1::TensorRef::kUcx);
  EXPECT_NE(ref->ucx().lease_id(), 0u);
  EXPECT_EQ(producer->stats().live_leases, 1u);

  auto fetched = consumer->Fetch(*ref, "x");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_TRUE(at::equal(*fetched, tensor));
  consumer->Release(*ref);
  consumer->Release(*ref);  // idempotent
  EXPECT_TRUE(WaitForNoLeases(*producer));
  EXPECT_EQ(producer->stats().released_leases, 1u);
}

// UCX hand-offs count their bytes in dgrid_transfer_bytes_total{transport="ucx"}.
TEST(UcxChannel, CountsTransferBytes) {
  auto counter = [](const char* direction) {
    return metrics::Registry::Global()
        .GetCounter("dgrid_transfer_bytes_total", "Tensor bytes moved between stages",
                    {{"transport", "ucx"}, {"direction", direction}})
        ->value();
  };
  auto producer = MakeChannel();
  auto consumer = MakeChannel();
  ASSERT_NE(producer, nullptr);
  ASSERT_NE(consumer, nullptr);
  const double sent = counter("sent");
  const double received = counter("received");
  const at::Tensor tensor = at::randn({1 << 16});  // 256 KiB
  auto ref = producer->Publish(tensor);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(counter("sent") - sent, static_cast<double>(tensor.nbytes()));
  ASSERT_TRUE(consumer->Fetch(*ref, "x").ok());
  EXPECT_EQ(counter("received") - received, static_cast<double>(tensor.nbytes()));
  consumer->Release(*ref);
}

TEST(UcxChannel, SmallTensorsGoInline) {
  auto channel = MakeChannel();
  ASSERT_NE(channel, nullptr);
  const at::Tensor small = at::arange(100, at::kFloat);
  auto ref = channel->Publish(small);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->payload_case(), v1::TensorRef::kInlineData);
  auto fetched = channel->Fetch(*ref, "small");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_TRUE(at::equal(*fetched, small));
  EXPECT_EQ(channel->stats().registered_bytes, 0u);
}

TEST(UcxChannel, ExpiredLeaseIsReclaimedAndRefused) {
  UcxChannelOptions options;
  options.lease_duration = absl::Milliseconds(200);
  auto producer = MakeChannel(options);
  auto consumer = MakeChannel();
  ASSERT_NE(producer, nullptr);
  ASSERT_NE(consumer, nullptr);
  WireUp(*producer, *consumer);
  auto ref = producer->Publish(at::ones({1 << 18}));
  ASSERT_TRUE(ref.ok()) << ref.status();
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_TRUE(WaitForNoLeases(*producer));
  EXPECT_EQ(producer->stats().expired_leases, 1u);
  auto fetched = consumer->Fetch(*ref, "latents");
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kDeadlineExceeded) << fetched.status();
  EXPECT_NE(fetched.status().message().find("expired"), std::string::npos);
}

TEST(UcxChannel, PullAfterReleaseSeesTheClearedLeaseWord) {
  auto producer = MakeChannel();
  auto consumer = MakeChannel();
  ASSERT_NE(producer, nullptr);
  ASSERT_NE(consumer, nullptr);
  WireUp(*producer, *consumer);
  auto ref = producer->Publish(at::ones({1 << 18}));
  ASSERT_TRUE(ref.ok()) << ref.status();
  producer->Release(*ref);  // the buffer goes back to the pool, still registered
  auto fetched = consumer->Fetch(*ref, "latents");
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kFailedPrecondition) << fetched.status();
}

// Same-host pulls copy the producer's UCX-allocated shared memory directly; over tcp only, or
// from LibTorch memory that no shared-memory domain allocated, they go through ucp_get_nbx.
TEST(UcxChannel, PullPathFollowsTransportsAndMemory) {
  struct Case {
    const char* tls;
    bool ucx_host_memory;
    bool direct;
  };
  for (const Case& c :
       {Case{"shm,tcp", true, true}, Case{"tcp", true, false}, Case{"shm,tcp", false, false}}) {
    SCOPED_TRACE(testing::Message() << c.tls << " ucx_host_memory=" << c.ucx_host_memory);
    UcxChannelOptions options;
    options.tls = c.tls;
    options.ucx_host_memory = c.ucx_host_memory;
    auto producer = MakeChannel(options);
    auto consumer = MakeChannel(options);
    ASSERT_NE(producer, nullptr);
    ASSERT_NE(consumer, nullptr);
    const at::Tensor tensor = at::randn({3 << 20});  // 12 MiB: huge-page destination, populated
    auto ref = producer->Publish(tensor);
    ASSERT_TRUE(ref.ok()) << ref.status();
    auto fetched = consumer->Fetch(*ref, "x");
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_TRUE(at::equal(*fetched, tensor));
    EXPECT_EQ(consumer->stats().direct_copies, c.direct ? 1u : 0u);
    EXPECT_EQ(consumer->stats().ucx_gets, c.direct ? 0u : 1u);
    consumer->Release(*ref);
    EXPECT_TRUE(WaitForNoLeases(*producer));
  }
}

// Bytes that change between publish and pull fail the fetch with DATA_LOSS, on both pull paths.
// Producer and consumer share this process, so the producer's buffer is at the reference's address.
TEST(UcxChannel, CorruptedTransferIsDataLoss) {
  for (const char* tls : {"shm,tcp", "tcp"}) {
    SCOPED_TRACE(tls);
    UcxChannelOptions options;
    options.tls = tls;
    auto producer = MakeChannel(options);
    auto consumer = MakeChannel(options);
    ASSERT_NE(producer, nullptr);
    ASSERT_NE(consumer, nullptr);
    const at::Tensor tensor = at::randn({1 << 18});
    auto ref = producer->Publish(tensor);
    ASSERT_TRUE(ref.ok()) << ref.status();
    ASSERT_NE(ref->crc32c(), 0u);
    auto intact = consumer->Fetch(*ref, "x");  // the checksum passes on the bytes as published
    ASSERT_TRUE(intact.ok()) << intact.status();
    EXPECT_TRUE(at::equal(*intact, tensor));

    reinterpret_cast<unsigned char*>(ref->ucx().remote_address())[12345] ^= 0x10;
    auto corrupted = consumer->Fetch(*ref, "x");
    EXPECT_EQ(corrupted.status().code(), absl::StatusCode::kDataLoss) << corrupted.status();
    EXPECT_NE(corrupted.status().message().find("CRC-32C"), std::string::npos);

    // A consumer with checksums off takes the bytes as they are.
    options.checksum = false;
    auto unchecked = MakeChannel(options);
    ASSERT_NE(unchecked, nullptr);
    auto taken = unchecked->Fetch(*ref, "x");
    ASSERT_TRUE(taken.ok()) << taken.status();
    EXPECT_FALSE(at::equal(*taken, tensor));
    consumer->Release(*ref);
    EXPECT_TRUE(WaitForNoLeases(*producer));
  }
}

// Acceptance test of the data plane: 8 producers and 8 consumers, 10 000 checksummed transfers of
// random sizes, no mismatch, and registered memory back to where it started. Over shared memory
// (direct copies) and over tcp (ucp_get_nbx).
class UcxIntegrityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(UcxIntegrityTest, EightByEight) {
  constexpr int kProducers = 8;
  constexpr int kConsumers = 8;
  constexpr int kTransfers = 10000;
  UcxChannelOptions options;
  options.inline_threshold_bytes = 0;
  options.max_cached_bytes = 32 << 20;
  options.tls = GetParam();
  std::vector<std::unique_ptr<UcxChannel>> producers, consumers;
  for (int i = 0; i < kProducers; ++i) producers.push_back(MakeChannel(options));
  for (int i = 0; i < kConsumers; ++i) consumers.push_back(MakeChannel(options));
  for (auto& c : producers) ASSERT_NE(c, nullptr);
  for (auto& c : consumers) ASSERT_NE(c, nullptr);
  std::vector<uint64_t> start_registered;
  for (auto& p : producers) start_registered.push_back(p->stats().registered_bytes);

  struct Item {
    v1::TensorRef ref;
    uint64_t checksum;
  };
  absl::Mutex mutex;
  std::deque<Item> queue;  // bounded, so live leases stay few
  int produced = 0;
  std::atomic<int> consumed{0}, mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      std::mt19937_64 rng(1234 + p);
      std::uniform_real_distribution<double> log_size(0.0, 18.0);  // 1 B .. 256 KiB
      for (;;) {
        {
          absl::MutexLock lock(&mutex);
          if (produced == kTransfers) return;
          ++produced;
        }
        const int64_t size = static_cast<int64_t>(std::exp2(log_size(rng)));
        at::Tensor bytes = at::empty({size}, at::kByte);
        uint8_t* data = bytes.data_ptr<uint8_t>();
        for (int64_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(rng());
        auto ref = producers[p]->Publish(bytes);
        if (!ref.ok()) {
          ADD_FAILURE() << ref.status();
          absl::MutexLock lock(&mutex);
          ++errors;
          continue;
        }
        absl::MutexLock lock(&mutex);
        mutex.Await(absl::Condition(
            +[](std::deque<Item>* q) { return q->size() < 64; }, &queue));
        queue.push_back({*std::move(ref), Checksum(data, size)});
      }
    });
  }
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      for (;;) {
        Item item;
        {
          absl::MutexLock lock(&mutex);
          auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
            return !queue.empty() || consumed.load() + errors.load() >= kTransfers;
          };
          mutex.Await(absl::Condition(&ready));
          if (queue.empty()) return;
          item = std::move(queue.front());
          queue.pop_front();
        }
        auto tensor = consumers[c]->Fetch(item.ref, "bytes");
        if (!tensor.ok()) {
          ADD_FAILURE() << tensor.status();
          ++errors;
        } else if (Checksum(tensor->data_ptr<uint8_t>(), tensor->numel()) != item.checksum) {
          ++mismatches;
        }
        consumers[c]->Release(item.ref);
        absl::MutexLock lock(&mutex);  // wakes the consumers waiting for the end
        ++consumed;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(consumed.load(), kTransfers);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  for (int p = 0; p < kProducers; ++p) {
    EXPECT_TRUE(WaitForNoLeases(*producers[p])) << "producer " << p;
    producers[p]->TrimPool();
    EXPECT_EQ(producers[p]->stats().registered_bytes, start_registered[p]) << "producer " << p;
  }
  for (auto& c : consumers) EXPECT_EQ(c->stats().registered_bytes, 0u);
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxIntegrityTest, ::testing::Values("shm,tcp", "tcp"));

}  // namespace
}  // namespace dgrid
