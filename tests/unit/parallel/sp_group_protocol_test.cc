// The denoiser group's messages (services/denoiser/group/group_protocol.h) over the thread test
// seam: a request's family-generic DenoiseInput (scalars, optional guidance_scale_2, positive and
// negative named tensors of any family) arrives on every peer as the leader sent it.
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "services/denoiser/group/group_protocol.h"
#include "tests/unit/parallel/sp_thread_communicator.h"

namespace dgrid {
namespace {

void ExpectSameTensors(const NamedTensors& got, const NamedTensors& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, tensor] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name;
    EXPECT_EQ(it->second.scalar_type(), tensor.scalar_type()) << name;
    EXPECT_TRUE(at::equal(it->second, tensor)) << name;
  }
}

std::vector<GroupMessage> SendToPeers(const GroupMessage& sent, int size) {
  std::mutex mu;
  std::vector<GroupMessage> got(size);
  testing::RunOnThreadGroup(size, [&](int rank, Communicator& comm) {
    if (rank == 0) {
      EXPECT_TRUE(SendGroupMessage(comm, sent, at::kCPU).ok());
      return;
    }
    absl::StatusOr<GroupMessage> message = ReceiveGroupMessage(comm, at::kCPU);
    ASSERT_TRUE(message.ok()) << message.status();
    std::lock_guard<std::mutex> lock(mu);
    got[rank] = *std::move(message);
  });
  return got;
}

TEST(GroupProtocolTest, AWanRequestArrivesWhole) {
  GroupMessage sent;
  sent.kind = GroupMessageKind::kDenoise;
  DenoiseInput& in = sent.input;
  in.request_id = "wan-1";
  in.width = 832;
  in.height = 480;
  in.num_frames = 81;
  in.num_inference_steps = 40;
  in.guidance_scale = 4.0;
  in.guidance_scale_2 = 3.0;
  in.seed = 18446744073709551557ull;  // beyond int64
  in.positive["prompt_embeds"] = at::randn({1, 7, 24});
  in.negative["prompt_embeds"] = at::randn({1, 5, 24}).to(at::kBFloat16);
  const std::vector<GroupMessage> received = SendToPeers(sent, 3);
  for (int rank = 1; rank < 3; ++rank) {
    const GroupMessage& got = received[rank];
    EXPECT_EQ(got.kind, GroupMessageKind::kDenoise);
    EXPECT_EQ(got.input.request_id, "wan-1");
    EXPECT_EQ(got.input.width, 832);
    EXPECT_EQ(got.input.height, 480);
    EXPECT_EQ(got.input.num_frames, 81);
    EXPECT_EQ(got.input.num_inference_steps, 40);
    EXPECT_EQ(got.input.guidance_scale, 4.0);
    EXPECT_EQ(got.input.guidance_scale_2, std::optional<double>(3.0));
    EXPECT_EQ(got.input.true_cfg_scale, 1.0);
    EXPECT_EQ(got.input.seed, in.seed);
    ExpectSameTensors(got.input.positive, in.positive);
    ExpectSameTensors(got.input.negative, in.negative);
  }
}

TEST(GroupProtocolTest, AFluxRequestWithoutNegativeOrSecondScale) {
  GroupMessage sent;
  sent.kind = GroupMessageKind::kDenoise;
  DenoiseInput& in = sent.input;
  in.request_id = "flux-1";
  in.width = 1024;
  in.height = 768;
  in.num_inference_steps = 28;
  in.guidance_scale = 3.5;
  in.true_cfg_scale = 0.1 + 0.2;  // a double that must survive the JSON header exactly
  in.positive["prompt_embeds"] = at::randn({1, 5, 32});
  in.positive["pooled_prompt_embeds"] = at::randn({1, 24});
  const std::vector<GroupMessage> got = SendToPeers(sent, 2);
  EXPECT_EQ(got[1].input.request_id, "flux-1");
  EXPECT_EQ(got[1].input.num_frames, 1);
  EXPECT_FALSE(got[1].input.guidance_scale_2.has_value());
  EXPECT_EQ(got[1].input.true_cfg_scale, in.true_cfg_scale);
  ExpectSameTensors(got[1].input.positive, in.positive);
  EXPECT_TRUE(got[1].input.negative.empty());
}

// Step caching (#21 item 2): every peer gets the leader's settings exactly, so that all ranks
// apply the same rules to the same summed change.
TEST(GroupProtocolTest, AStepCacheSettingArrivesExactly) {
  GroupMessage sent;
  sent.kind = GroupMessageKind::kDenoise;
  DenoiseInput& in = sent.input;
  in.request_id = "flux-cached";
  in.width = 512;
  in.height = 512;
  in.num_inference_steps = 28;
  in.cache.method = StepCacheMethod::kTeaCache;
  in.cache.threshold = 0.1 + 0.2;  // a double that must survive the JSON header exactly
  in.cache.warmup_steps = 2;
  in.cache.max_skip = 3;
  in.positive["prompt_embeds"] = at::randn({1, 5, 32});
  const std::vector<GroupMessage> got = SendToPeers(sent, 2);
  EXPECT_EQ(got[1].input.cache.method, StepCacheMethod::kTeaCache);
  EXPECT_EQ(got[1].input.cache.threshold, in.cache.threshold);
  EXPECT_EQ(got[1].input.cache.warmup_steps, 2);
  EXPECT_EQ(got[1].input.cache.max_skip, 3);

  in.cache = StepCacheConfig();  // off: peers get it off
  EXPECT_FALSE(SendToPeers(sent, 2)[1].input.cache.enabled());
}

TEST(GroupProtocolTest, IdleAndStop) {
  for (GroupMessageKind kind : {GroupMessageKind::kIdle, GroupMessageKind::kStop}) {
    GroupMessage sent;
    sent.kind = kind;
    EXPECT_EQ(SendToPeers(sent, 2)[1].kind, kind);
  }
}

}  // namespace
}  // namespace dgrid
