// Activation functions named as transformers' ACT2FN keys (transformers/activations.py), for the
// text encoders' feed-forward layers.
//
// Each function reproduces the reference's arithmetic op by op, so fp32 results match transformers
// on the same device. Like ATen operators, ApplyActivation throws c10::Error on bad input; callers
// run it inside a TorchCall.
#ifndef DGRID_SERVICES_ENCODER_MODELS_ACTIVATIONS_H_
#define DGRID_SERVICES_ENCODER_MODELS_ACTIVATIONS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace at {
class Tensor;
}  // namespace at

namespace dgrid::encoder {

enum class Activation {
  kGelu,             // "gelu": exact erf GELU (GELUActivation)
  kGeluNew,          // "gelu_new": tanh approximation written out (NewGELUActivation)
  kGeluPytorchTanh,  // "gelu_pytorch_tanh": ATen's fused tanh approximation (GELUTanh)
  kQuickGelu,        // "quick_gelu": x * sigmoid(1.702 x) (QuickGELUActivation)
  kRelu,             // "relu"
  kSilu,             // "silu" / "swish"
};

// INVALID_ARGUMENT for names dgrid does not implement.
absl::StatusOr<Activation> ParseActivation(absl::string_view name);

at::Tensor ApplyActivation(Activation activation, const at::Tensor& x);

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_MODELS_ACTIVATIONS_H_
