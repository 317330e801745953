#include "common/status.h"

#include <cerrno>
#include <stdexcept>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/torch_status.h"
#include "common/ucx_status.h"

namespace dgrid {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("x = ", x, " is odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int half, Half(x));
  ASSIGN_OR_RETURN(half, Half(half));  // assigns to an existing variable
  return half;
}

absl::Status CheckAll(std::initializer_list<int> xs) {
  for (int x : xs) RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(StatusMacros, AssignOrReturnPropagatesValueAndError) {
  EXPECT_EQ(*Quarter(8), 2);
  absl::StatusOr<int> odd = Quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(odd.status().message(), HasSubstr("x = 3 is odd"));
}

TEST(StatusMacros, ReturnIfErrorStopsAtFirstError) {
  EXPECT_TRUE(CheckAll({2, 4}).ok());
  const absl::Status s = CheckAll({2, 5, 7});
  EXPECT_THAT(s.message(), HasSubstr("x = 5"));
}

TEST(Annotate, PrefixesContextAndKeepsCode) {
  const absl::Status s = Annotate(absl::NotFoundError("no such file"), "loading vae");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "loading vae: no such file");
  EXPECT_TRUE(Annotate(absl::OkStatus(), "x").ok());
}

TEST(ErrnoStatus, MapsCommonErrors) {
  EXPECT_EQ(ErrnoStatus(ENOENT, "open a").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(EACCES, "open a").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(ErrnoStatus(ENOENT, "open a").message(), HasSubstr("open a"));
}

TEST(TorchCall, ConvertsShapeErrorToStatusWithoutBacktrace) {
  const absl::StatusOr<at::Tensor> r = TorchCall("matmul of embeddings", [] {
    return at::matmul(at::ones({2, 3}), at::ones({4, 5}));
  });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(r.status().message(), HasSubstr("matmul of embeddings: "));
  EXPECT_THAT(r.status().message(), Not(HasSubstr("\n")));
}

TEST(TorchCall, ValueErrorIsInvalidArgument) {
  const absl::Status s = TorchCall("check", [] { TORCH_CHECK_VALUE(false, "bad value 7"); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("bad value 7"));
}

TEST(TorchCall, PassesValuesAndStatusesThrough) {
  absl::StatusOr<int> v = TorchCall("add", [] { return 3 + 4; });
  EXPECT_EQ(*v, 7);
  absl::Status s = TorchCall("inner", [] { return absl::UnavailableError("peer gone"); });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  absl::StatusOr<int> so = TorchCall("inner", []() -> absl::StatusOr<int> { return 5; });
  EXPECT_EQ(*so, 5);
}

TEST(TorchCall, StdExceptionsBecomeStatuses) {
  EXPECT_EQ(TorchCall("alloc", [] { throw std::bad_alloc(); }).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(TorchCall("x", [] { throw std::runtime_error("boom"); }).code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(TorchCall("x", [] { throw 42; }).code(), absl::StatusCode::kInternal);
}

TEST(UcxStatus, MapsPeerFailuresToUnavailable) {
  EXPECT_TRUE(UcxStatus(UCS_OK, "x").ok());
  EXPECT_EQ(UcxStatus(UCS_ERR_CONNECTION_RESET, "get").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(UcxStatus(UCS_ERR_UNREACHABLE, "get").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(UcxStatus(UCS_ERR_TIMED_OUT, "get").code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(UcxStatus(UCS_ERR_NO_MEMORY, "reg").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(UcxStatus(UCS_ERR_CANCELED, "get").code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(UcxStatus(UCS_ERR_CONNECTION_RESET, "pull latents").message(),
              HasSubstr("pull latents: "));
}

}  // namespace
}  // namespace dgrid

#include "common/grpc_status.h"

namespace dgrid {
namespace {

TEST(GrpcStatus, RoundTripsCodeAndMessage) {
  const absl::Status s = absl::ResourceExhaustedError("denoiser queue is full");
  const grpc::Status g = ToGrpcStatus(s);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(g.error_message(), "denoiser queue is full");
  EXPECT_EQ(FromGrpcStatus(g), s);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "x")).code(),
            absl::StatusCode::kUnavailable);
}

TEST(GrpcStatus, AFullQueueKeepsItsMarkAcrossGrpcAndAnnotation) {
  const absl::Status full = QueueFull("denoiser queue is full (16 waiting)");
  EXPECT_TRUE(IsQueueFull(full));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(IsQueueFull(absl::ResourceExhaustedError("CUDA out of memory")));
  const grpc::Status wire = ToGrpcStatus(full);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(wire.error_message(), "denoiser queue is full (16 waiting)");
  EXPECT_TRUE(IsQueueFull(wire));
  const absl::Status back = FromGrpcStatus(wire);
  EXPECT_TRUE(IsQueueFull(back));
  EXPECT_TRUE(IsQueueFull(Annotate(back, "denoiser d1")));
  EXPECT_FALSE(IsQueueFull(ToGrpcStatus(absl::ResourceExhaustedError("out of memory"))));
}

TEST(GrpcStatus, ALostInputKeepsItsMarkAcrossGrpcAndAnnotation) {
  const absl::Status lost = InputLost("latents: lease 7 was released or reclaimed by the producer");
  EXPECT_TRUE(IsInputLost(lost));
  EXPECT_FALSE(IsQueueFull(lost));
  EXPECT_EQ(lost.code(), absl::StatusCode::kAborted);
  EXPECT_FALSE(IsInputLost(absl::AbortedError("aborted for another reason")));
  const grpc::Status wire = ToGrpcStatus(lost);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(wire.error_message(), "latents: lease 7 was released or reclaimed by the producer");
  EXPECT_TRUE(IsInputLost(wire));
  EXPECT_FALSE(IsQueueFull(wire));
  const absl::Status back = FromGrpcStatus(wire);
  EXPECT_TRUE(IsInputLost(back));
  EXPECT_TRUE(IsInputLost(Annotate(back, "decoder (request r1)")));
  EXPECT_FALSE(IsInputLost(ToGrpcStatus(absl::AbortedError("x"))));
}

}  // namespace
}  // namespace dgrid
