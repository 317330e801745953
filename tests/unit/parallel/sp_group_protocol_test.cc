// The denoiser group's messages (services/denoiser/group/group_protocol.h) over the thread test
// seam: a request's family-generic DenoiseInput (scalars, optional guidance_scale_2, positive and
// negative named tensors of any family) arrives on every peer as the leader sent it, alone or as
// members joining a batch's step.
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
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

// Step-level batching: a batch's step names its batch, the members joining (each request whole,
// its tensors in order, an image-to-image one included) and every member taking the step.
TEST(GroupProtocolTest, ABatchStepArrivesWhole) {
  GroupMessage sent;
  sent.kind = GroupMessageKind::kBatchStep;
  GroupBatchStep& step = sent.batch_step;
  step.batch = 5;
  for (int64_t id : {3, 8}) {
    DenoiseInput in;
    in.request_id = "flux-" + std::to_string(id);
    in.width = 512;
    in.height = 256;
    in.num_inference_steps = static_cast<int>(id);
    in.seed = static_cast<uint64_t>(id) * 1000;
    in.true_cfg_scale = 1.0 + 0.1 * static_cast<double>(id);
    in.positive["prompt_embeds"] = at::randn({1, 5, 32});
    in.positive["pooled_prompt_embeds"] = at::randn({1, 24});
    in.negative["prompt_embeds"] = at::randn({1, 5, 32});
    in.negative["pooled_prompt_embeds"] = at::randn({1, 24});
    if (id == 8) {
      in.image_latents = at::randn({1, 4, 32, 64});
      in.strength = 0.6;
    }
    step.admitted.emplace_back(id, in);
  }
  step.members = {1, 3, 8};
  const std::vector<GroupMessage> got = SendToPeers(sent, 3);
  for (int rank = 1; rank < 3; ++rank) {
    ASSERT_EQ(got[rank].kind, GroupMessageKind::kBatchStep);
    const GroupBatchStep& g = got[rank].batch_step;
    EXPECT_EQ(g.batch, 5);
    EXPECT_EQ(g.members, step.members);
    ASSERT_EQ(g.admitted.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      const DenoiseInput& want = step.admitted[i].second;
      const DenoiseInput& in = g.admitted[i].second;
      EXPECT_EQ(g.admitted[i].first, step.admitted[i].first);
      EXPECT_EQ(in.request_id, want.request_id);
      EXPECT_EQ(in.num_inference_steps, want.num_inference_steps);
      EXPECT_EQ(in.seed, want.seed);
      EXPECT_EQ(in.true_cfg_scale, want.true_cfg_scale);
      ExpectSameTensors(in.positive, want.positive);
      ExpectSameTensors(in.negative, want.negative);
      EXPECT_EQ(in.image_latents.defined(), want.image_latents.defined());
      if (want.image_latents.defined()) {
        EXPECT_TRUE(at::equal(in.image_latents, want.image_latents));
        EXPECT_EQ(in.strength, want.strength);
      }
    }
  }
  // A step with nobody joining and nobody left (a batch dropped on every rank).
  step.admitted.clear();
  step.members.clear();
  const GroupMessage empty = SendToPeers(sent, 2)[1];
  EXPECT_EQ(empty.kind, GroupMessageKind::kBatchStep);
  EXPECT_TRUE(empty.batch_step.admitted.empty());
  EXPECT_TRUE(empty.batch_step.members.empty());
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
