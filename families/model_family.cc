#include "families/model_family.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "families/registry.h"
#include "nlohmann/json.hpp"

namespace dgrid::families {

int64_t TransformerShape::ImageTokens(int width, int height) const {
  return static_cast<int64_t>(width / pixels_per_token) * (height / pixels_per_token);
}

int64_t TransformerShape::VideoTokens(int width, int height, int frames) const {
  const int64_t latent_frames =
      frames_per_token > 0 && frames > 1 ? (frames - 1) / frames_per_token + 1 : 1;
  return ImageTokens(width, height) * latent_frames;
}

double TransformerShape::WeightBytes() const { return FamilyOf(*this).WeightBytes(*this); }

std::vector<double> TransformerShape::BlockWeightBytes() const {
  return FamilyOf(*this).BlockWeightBytes(*this);
}

double TransformerShape::NonBlockWeightBytes() const {
  return FamilyOf(*this).NonBlockWeightBytes(*this);
}

double TransformerShape::ForwardFlops(int64_t image_tokens) const {
  return FamilyOf(*this).ForwardFlops(*this, image_tokens);
}

TransformerShape ModelFamily::DefaultShape() const {
  // A family's own first shape name always resolves (registry_test checks every family).
  return *LookupShape(shape_names().front());
}

absl::Status ReadPositiveIntField(const nlohmann::json& config, absl::string_view source,
                                  const char* key, int* out) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return absl::OkStatus();
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", key, ": ", what));
  };
  if (!it->is_number()) return bad("expected an integer");
  const double value = it->get<double>();
  if (!std::isfinite(value) || value != std::floor(value) || std::fabs(value) > 1e9) {
    return bad("expected an integer");
  }
  if (value < 1) return bad("must be >= 1");
  *out = static_cast<int>(value);
  return absl::OkStatus();
}

}  // namespace dgrid::families
