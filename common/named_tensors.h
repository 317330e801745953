// Tensors by name: how a model family's stages hand each other their conditioning, named as the
// diffusers pipeline names it ("prompt_embeds", "pooled_prompt_embeds"; stages.proto
// TextEmbeddings). Which names a family uses is families::ModelFamily::text_embedding_names().
#ifndef DGRID_COMMON_NAMED_TENSORS_H_
#define DGRID_COMMON_NAMED_TENSORS_H_

#include <map>
#include <string>

#include <ATen/core/Tensor.h>

namespace dgrid {

using NamedTensors = std::map<std::string, at::Tensor>;

}  // namespace dgrid

#endif  // DGRID_COMMON_NAMED_TENSORS_H_
