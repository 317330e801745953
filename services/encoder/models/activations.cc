#include "services/encoder/models/activations.h"

#include <cmath>

#include <ATen/ATen.h>

#include "common/status.h"

namespace dgrid::encoder {
namespace {
// math.pi, spelled out: M_PI is not standard C++.
constexpr double kPi = 3.14159265358979323846;
}  // namespace

absl::StatusOr<Activation> ParseActivation(absl::string_view name) {
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_new") return Activation::kGeluNew;
  if (name == "gelu_pytorch_tanh") return Activation::kGeluPytorchTanh;
  if (name == "quick_gelu") return Activation::kQuickGelu;
  if (name == "relu") return Activation::kRelu;
  if (name == "silu" || name == "swish") return Activation::kSilu;
  return InvalidArgument("unsupported activation '", name, "'");
}

at::Tensor ApplyActivation(Activation activation, const at::Tensor& x) {
  switch (activation) {
    case Activation::kGelu:
      return at::gelu(x);
    case Activation::kGeluNew: {
      // Same operation order as NewGELUActivation so that every intermediate rounds the same way:
      // 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).
      const double k = std::sqrt(2.0 / kPi);
      at::Tensor inner = at::mul(at::add(x, at::mul(at::pow(x, 3.0), 0.044715)), k);
      return at::mul(at::mul(x, 0.5), at::add(at::tanh(inner), 1.0));
    }
    case Activation::kGeluPytorchTanh:
      return at::gelu(x, "tanh");
    case Activation::kQuickGelu:
      return at::mul(x, at::sigmoid(at::mul(x, 1.702)));
    case Activation::kRelu:
      return at::relu(x);
    case Activation::kSilu:
      return at::silu(x);
  }
  return x;
}

}  // namespace dgrid::encoder
