#include "transport/inline/inline_channel.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dgrid {
namespace {

TEST(InlineChannel, PublishFetchRoundTrip) {
  InlineChannel channel;
  at::Tensor t = at::randn({1, 16, 8, 8}).to(at::kBFloat16);
  auto ref = channel.Publish(t);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_TRUE(ref->has_inline_data());
  auto back = channel.Fetch(*ref, "latents");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(at::equal(*back, t));
  channel.Release(*ref);  // no-op, must not fail
}

TEST(InlineChannel, RefusesOversizedTensors) {
  InlineChannel channel(/*max_bytes=*/1024);
  auto ref = channel.Publish(at::zeros({1024}));
  EXPECT_EQ(ref.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(InlineChannel, FetchRejectsUcxReferences) {
  InlineChannel channel;
  v1::TensorRef ref = *channel.Publish(at::ones({2}));
  ref.mutable_ucx()->set_lease_id(7);
  ref.mutable_ucx()->set_worker_address("w");
  auto back = channel.Fetch(ref, "x");
  EXPECT_EQ(back.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(back.status().message(), ::testing::HasSubstr("not inline"));
}

}  // namespace
}  // namespace dgrid
