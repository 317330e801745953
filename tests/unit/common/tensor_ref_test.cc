#include "common/tensor_ref.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dgrid {
namespace {

using ::testing::HasSubstr;

TEST(DType, SizesAndNames) {
  EXPECT_EQ(*DTypeSize(v1::DTYPE_FLOAT32), 4u);
  EXPECT_EQ(*DTypeSize(v1::DTYPE_BFLOAT16), 2u);
  EXPECT_EQ(*DTypeSize(v1::DTYPE_FLOAT8_E4M3FN), 1u);
  EXPECT_EQ(DTypeName(v1::DTYPE_INT64), "int64");
  EXPECT_EQ(DTypeSize(v1::DTYPE_UNSPECIFIED).status().code(), absl::StatusCode::kInvalidArgument);
  const auto unknown = DTypeSize(static_cast<v1::DType>(77));
  EXPECT_THAT(unknown.status().message(), HasSubstr("unknown(77)"));
}

TEST(TensorRef, RoundTripsEveryDtype) {
  for (at::ScalarType type : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble, at::kLong,
                              at::kInt, at::kByte, at::kBool}) {
    at::Tensor t = at::randn({2, 3, 5}).mul(10).to(type);
    auto ref = TensorToInlineRef(t);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(ref->byte_size(), t.nbytes());
    auto back = TensorFromInlineRef(*ref, "t");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->scalar_type(), type);
    EXPECT_TRUE(at::equal(*back, t)) << c10::toString(type);
  }
}

TEST(TensorRef, NonContiguousAndScalar) {
  at::Tensor t = at::arange(12, at::kFloat).reshape({3, 4}).t();
  auto back = TensorFromInlineRef(*TensorToInlineRef(t), "t");
  EXPECT_TRUE(at::equal(*back, t));
  at::Tensor scalar = at::scalar_tensor(2.5);
  auto s = TensorFromInlineRef(*TensorToInlineRef(scalar), "s");
  EXPECT_EQ(s->dim(), 0);
  EXPECT_DOUBLE_EQ(s->item<double>(), 2.5);
}

v1::TensorRef ValidRef() { return *TensorToInlineRef(at::ones({2, 4})); }

TEST(ValidateTensorRef, RejectsInconsistentReferences) {
  struct Case {
    const char* what;
    std::function<void(v1::TensorRef&)> mutate;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"unknown dtype", [](v1::TensorRef& r) { r.set_dtype(static_cast<v1::DType>(99)); },
       "latents.dtype: dtype unknown(99)"},
      {"unspecified dtype", [](v1::TensorRef& r) { r.set_dtype(v1::DTYPE_UNSPECIFIED); },
       "dtype unspecified"},
      {"negative dim", [](v1::TensorRef& r) { r.set_shape(1, -4); },
       "latents.shape[1] = -4 is negative"},
      {"byte size lies", [](v1::TensorRef& r) { r.set_byte_size(31); }, "byte_size = 31"},
      {"short payload", [](v1::TensorRef& r) { r.mutable_inline_data()->resize(8); },
       "inline_data has 8 bytes, expected 32"},
      {"too many dims",
       [](v1::TensorRef& r) {
         r.clear_shape();
         for (int i = 0; i < 9; ++i) r.add_shape(1);
       },
       "9 dimensions"},
      {"overflow",
       [](v1::TensorRef& r) {
         r.clear_shape();
         r.add_shape(int64_t{1} << 40);
         r.add_shape(int64_t{1} << 40);
       },
       "overflows"},
      {"no payload", [](v1::TensorRef& r) { r.clear_inline_data(); }, "has no payload"},
      {"ucx without lease", [](v1::TensorRef& r) { r.mutable_ucx()->set_worker_address("w"); },
       "lease_id is 0"},
  };
  for (const Case& c : cases) {
    v1::TensorRef ref = ValidRef();
    c.mutate(ref);
    const absl::Status s = ValidateTensorRef(ref, "latents");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expected)) << c.what;
    EXPECT_FALSE(TensorFromInlineRef(ref, "latents").ok()) << c.what;
  }
}

TEST(TensorRef, UnsupportedLibTorchDtype) {
  const auto r = TensorToInlineRef(at::ones({2}, at::kComplexFloat));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("ComplexFloat"));
  EXPECT_FALSE(TensorToInlineRef(at::Tensor()).ok());
}

}  // namespace
}  // namespace dgrid
