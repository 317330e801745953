#include "services/denoiser/group/group_protocol.h"

#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {
namespace {

// The tensors of a request, in the order they are broadcast. Undefined ones are skipped (the
// header says which are present).
std::vector<std::pair<const char*, at::Tensor FluxSamplerRequest::*>> TensorFields() {
  return {{"prompt_embeds", &FluxSamplerRequest::prompt_embeds},
          {"pooled_prompt_embeds", &FluxSamplerRequest::pooled_prompt_embeds},
          {"negative_prompt_embeds", &FluxSamplerRequest::negative_prompt_embeds},
          {"negative_pooled_prompt_embeds", &FluxSamplerRequest::negative_pooled_prompt_embeds}};
}

const char* KindName(GroupMessageKind kind) {
  switch (kind) {
    case GroupMessageKind::kDenoise:
      return "denoise";
    case GroupMessageKind::kStop:
      return "stop";
    case GroupMessageKind::kIdle:
      break;
  }
  return "idle";
}

}  // namespace

absl::Status SendGroupMessage(Communicator& comm, const GroupMessage& message, at::Device device) {
  nlohmann::json header = {{"kind", KindName(message.kind)}};
  std::vector<at::Tensor> tensors;
  if (message.kind == GroupMessageKind::kDenoise) {
    const FluxSamplerRequest& r = message.request;
    header["request_id"] = r.request_id;
    header["height"] = r.height;
    header["width"] = r.width;
    header["num_inference_steps"] = r.num_inference_steps;
    header["seed"] = r.seed;
    header["guidance_scale"] = r.guidance_scale;
    header["true_cfg_scale"] = r.true_cfg_scale;
    header["vae_scale_factor"] = r.vae_scale_factor;
    nlohmann::json list = nlohmann::json::array();
    absl::Status moved = TorchCall("group request tensors", [&] {
      for (const auto& [name, field] : TensorFields()) {
        const at::Tensor& t = r.*field;
        if (!t.defined()) continue;
        tensors.push_back(t.to(device).contiguous());
        list.push_back({{"name", name},
                        {"dtype", static_cast<int>(t.scalar_type())},
                        {"shape", t.sizes().vec()}});
      }
    });
    RETURN_IF_ERROR(moved);
    header["tensors"] = std::move(list);
  }
  std::string bytes = header.dump();
  RETURN_IF_ERROR(comm.BroadcastBytes(bytes, 0));
  for (at::Tensor& t : tensors) RETURN_IF_ERROR(comm.Broadcast(t, 0));
  return absl::OkStatus();
}

absl::StatusOr<GroupMessage> ReceiveGroupMessage(Communicator& comm, at::Device device) {
  std::string bytes;
  RETURN_IF_ERROR(comm.BroadcastBytes(bytes, 0));
  GroupMessage message;
  std::vector<std::pair<at::Tensor FluxSamplerRequest::*, at::Tensor>> tensors;
  try {
    nlohmann::json header = nlohmann::json::parse(bytes);
    std::string kind = header.at("kind").get<std::string>();
    if (kind == "stop") {
      message.kind = GroupMessageKind::kStop;
      return message;
    }
    if (kind == "idle") return message;
    if (kind != "denoise") return absl::InternalError("group message of unknown kind " + kind);
    message.kind = GroupMessageKind::kDenoise;
    FluxSamplerRequest& r = message.request;
    r.request_id = header.at("request_id").get<std::string>();
    r.height = header.at("height").get<int64_t>();
    r.width = header.at("width").get<int64_t>();
    r.num_inference_steps = header.at("num_inference_steps").get<int>();
    r.seed = header.at("seed").get<uint64_t>();
    r.guidance_scale = header.at("guidance_scale").get<double>();
    r.true_cfg_scale = header.at("true_cfg_scale").get<double>();
    r.vae_scale_factor = header.at("vae_scale_factor").get<int64_t>();
    for (const auto& entry : header.at("tensors")) {
      std::string name = entry.at("name").get<std::string>();
      at::Tensor FluxSamplerRequest::*field = nullptr;
      for (const auto& [known, member] : TensorFields()) {
        if (name == known) field = member;
      }
      if (field == nullptr) return absl::InternalError("group request names tensor " + name);
      auto dtype = static_cast<at::ScalarType>(entry.at("dtype").get<int>());
      auto shape = entry.at("shape").get<std::vector<int64_t>>();
      tensors.emplace_back(field,
                           at::empty(shape, at::TensorOptions().dtype(dtype).device(device)));
    }
  } catch (const std::exception& e) {
    return absl::InternalError(std::string("malformed group message: ") + e.what());
  }
  for (auto& [field, tensor] : tensors) {
    RETURN_IF_ERROR(comm.Broadcast(tensor, 0));
    message.request.*field = std::move(tensor);
  }
  return message;
}

absl::StatusOr<StepDecision> AgreeOnStep(Communicator& comm, StepDecision decision) {
  std::string bytes(1, static_cast<char>('0' + static_cast<int>(decision)));
  RETURN_IF_ERROR(comm.BroadcastBytes(bytes, 0));
  if (bytes.size() != 1 || bytes[0] < '0' || bytes[0] > '2') {
    return absl::InternalError("malformed step decision from the group leader");
  }
  return static_cast<StepDecision>(bytes[0] - '0');
}

}  // namespace dgrid
