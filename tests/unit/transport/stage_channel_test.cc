// StageChannel: the stage flags pick the channel; UCX or inline, and a bad flag is an error.
#include "transport/stage_channel.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace dgrid {
namespace {

TEST(StageChannel, UcxFlagsSendLargeTensorsOverUcx) {
  StageChannel channel;
  ASSERT_TRUE(channel.Configure({"ucx", "tcp", 1024}).ok());
  const at::Tensor large = at::randn({4096});
  auto ref = channel.Publish(large);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->payload_case(), v1::TensorRef::kUcx);
  auto fetched = channel.Fetch(*ref, "large");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_TRUE(at::equal(*fetched, large));
  channel.Release(*ref);

  auto small = channel.Publish(at::ones({8}));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->payload_case(), v1::TensorRef::kInlineData);
}

TEST(StageChannel, UcxChecksumFlag) {
  for (const bool checksum : {true, false}) {
    StageChannel channel;
    ASSERT_TRUE(channel.Configure({"ucx", "tcp", 1024, checksum}).ok());
    auto ref = channel.Publish(at::randn({4096}));
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(ref->crc32c() != 0, checksum);
    channel.Release(*ref);
  }
}

TEST(StageChannel, InlineIsTheDefault) {
  StageChannel channel;
  auto ref = channel.Publish(at::randn({4096}));
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->payload_case(), v1::TensorRef::kInlineData);
  ASSERT_TRUE(channel.Configure({"inline", "", 65536}).ok());
  ref = channel.Publish(at::randn({1 << 16}));
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->payload_case(), v1::TensorRef::kInlineData);
}

TEST(StageChannel, RejectsUnknownTransportAndNegativeThreshold) {
  StageChannel channel;
  EXPECT_EQ(channel.Configure({"rdma", "", 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(channel.Configure({"ucx", "", -1}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StageChannel, FallsBackToInlineWhenUcxCannotStart) {
  StageChannel channel;
  // No UCX transport has this name: UCX refuses to start, the stage still serves inline.
  ASSERT_TRUE(channel.Configure({"ucx", "no_such_transport", 0}).ok());
  auto ref = channel.Publish(at::randn({1 << 16}));
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->payload_case(), v1::TensorRef::kInlineData);
}

}  // namespace
}  // namespace dgrid
