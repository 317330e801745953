#include "families/model_family.h"

#include "families/registry.h"

namespace dgrid::families {

int64_t TransformerShape::ImageTokens(int width, int height) const {
  return static_cast<int64_t>(width / pixels_per_token) * (height / pixels_per_token);
}

double TransformerShape::WeightBytes() const { return FamilyOf(*this).WeightBytes(*this); }

double TransformerShape::ForwardFlops(int64_t image_tokens) const {
  return FamilyOf(*this).ForwardFlops(*this, image_tokens);
}

TransformerShape ModelFamily::DefaultShape() const {
  // A family's own first shape name always resolves (registry_test checks every family).
  return *LookupShape(shape_names().front());
}

}  // namespace dgrid::families
