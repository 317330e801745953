#include "services/denoiser/group/group_protocol.h"

#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "common/step_cache.h"
#include "common/torch_status.h"

namespace dgrid {
namespace {

const char* KindName(GroupMessageKind kind) {
  switch (kind) {
    case GroupMessageKind::kDenoise:
      return "denoise";
    case GroupMessageKind::kStop:
      return "stop";
    case GroupMessageKind::kBatchStep:
      return "batch_step";
    case GroupMessageKind::kIdle:
      break;
  }
  return "idle";
}

// The named tensors of a request, in the order they are broadcast: the positive ones, then the
// negative ones, each by name. Undefined ones are skipped (the header lists those sent).
const char* kWhich[] = {"positive", "negative"};
NamedTensors& Side(DenoiseInput& input, int which) {
  return which == 0 ? input.positive : input.negative;
}

// Writes `r`'s fields into `header` and appends its tensors (moved to `device`) to `tensors`, in
// the order ReadInput takes them.
absl::Status WriteInput(const DenoiseInput& r, at::Device device, nlohmann::json& header,
                        std::vector<at::Tensor>& tensors) {
  header["request_id"] = r.request_id;
  header["width"] = r.width;
  header["height"] = r.height;
  header["num_frames"] = r.num_frames;
  header["num_inference_steps"] = r.num_inference_steps;
  header["guidance_scale"] = r.guidance_scale;
  if (r.guidance_scale_2.has_value()) header["guidance_scale_2"] = *r.guidance_scale_2;
  header["true_cfg_scale"] = r.true_cfg_scale;
  header["seed"] = r.seed;
  if (r.cache.enabled()) {
    // Every rank decides with the same numbers (JSON keeps doubles exact).
    header["cache"] = {{"method", StepCacheMethodName(r.cache.method)},
                       {"threshold", r.cache.threshold},
                       {"warmup_steps", r.cache.warmup_steps},
                       {"max_skip", r.cache.max_skip}};
  }
  nlohmann::json list = nlohmann::json::array();
  RETURN_IF_ERROR(TorchCall("group request tensors", [&] {
    for (int which = 0; which < 2; ++which) {
      for (const auto& [name, t] : which == 0 ? r.positive : r.negative) {
        if (!t.defined()) continue;
        tensors.push_back(t.to(device).contiguous());
        list.push_back({{"which", kWhich[which]},
                        {"name", name},
                        {"dtype", static_cast<int>(t.scalar_type())},
                        {"shape", t.sizes().vec()}});
      }
    }
  }));
  header["tensors"] = std::move(list);
  if (r.image_latents.defined()) {
    // Image-to-image: the encoded input image follows the named tensors.
    header["strength"] = r.strength;
    header["image_latents"] = {{"dtype", static_cast<int>(r.image_latents.scalar_type())},
                               {"shape", r.image_latents.sizes().vec()}};
    RETURN_IF_ERROR(TorchCall("group request tensors",
                              [&] { tensors.push_back(r.image_latents.to(device).contiguous()); }));
  }
  return absl::OkStatus();
}

// Reads WriteInput's fields into `r` and appends (where each tensor goes, an empty buffer on
// `device`) to `tensors`, to be filled by the broadcasts that follow the header. Throws on a
// malformed header (nlohmann::json's exceptions).
absl::Status ReadInput(const nlohmann::json& header, at::Device device, DenoiseInput& r,
                       std::vector<std::pair<at::Tensor*, at::Tensor>>& tensors) {
  r.request_id = header.at("request_id").get<std::string>();
  r.width = header.at("width").get<int>();
  r.height = header.at("height").get<int>();
  r.num_frames = header.at("num_frames").get<int>();
  r.num_inference_steps = header.at("num_inference_steps").get<int>();
  r.guidance_scale = header.at("guidance_scale").get<double>();
  if (header.contains("guidance_scale_2")) {
    r.guidance_scale_2 = header.at("guidance_scale_2").get<double>();
  }
  r.true_cfg_scale = header.at("true_cfg_scale").get<double>();
  r.seed = header.at("seed").get<uint64_t>();
  if (header.contains("cache")) {
    const auto& cache = header.at("cache");
    ASSIGN_OR_RETURN(r.cache,
                     ParseStepCacheSpec(cache.at("method").get<std::string>(), "group cache"));
    r.cache.threshold = cache.at("threshold").get<double>();
    r.cache.warmup_steps = cache.at("warmup_steps").get<int>();
    r.cache.max_skip = cache.at("max_skip").get<int>();
  }
  // Buffers first, pointers after: the maps do not move their values on insertion.
  for (const auto& entry : header.at("tensors")) {
    const std::string which = entry.at("which").get<std::string>();
    if (which != kWhich[0] && which != kWhich[1]) {
      return absl::InternalError("group request names tensor side " + which);
    }
    auto dtype = static_cast<at::ScalarType>(entry.at("dtype").get<int>());
    auto shape = entry.at("shape").get<std::vector<int64_t>>();
    at::Tensor& slot = Side(r, which == kWhich[0] ? 0 : 1)[entry.at("name").get<std::string>()];
    tensors.emplace_back(&slot, at::empty(shape, at::TensorOptions().dtype(dtype).device(device)));
  }
  if (header.contains("image_latents")) {
    const auto& entry = header.at("image_latents");
    r.strength = header.at("strength").get<double>();
    tensors.emplace_back(
        &r.image_latents,
        at::empty(entry.at("shape").get<std::vector<int64_t>>(),
                  at::TensorOptions()
                      .dtype(static_cast<at::ScalarType>(entry.at("dtype").get<int>()))
                      .device(device)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SendGroupMessage(Communicator& comm, const GroupMessage& message, at::Device device) {
  nlohmann::json header = {{"kind", KindName(message.kind)}};
  std::vector<at::Tensor> tensors;
  if (message.kind == GroupMessageKind::kDenoise) {
    RETURN_IF_ERROR(WriteInput(message.input, device, header, tensors));
  } else if (message.kind == GroupMessageKind::kBatchStep) {
    const GroupBatchStep& step = message.batch_step;
    header["batch"] = step.batch;
    header["members"] = step.members;
    nlohmann::json admitted = nlohmann::json::array();
    for (const auto& [id, input] : step.admitted) {
      nlohmann::json entry = {{"id", id}};
      RETURN_IF_ERROR(WriteInput(input, device, entry, tensors));
      admitted.push_back(std::move(entry));
    }
    header["admitted"] = std::move(admitted);
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
  std::vector<std::pair<at::Tensor*, at::Tensor>> tensors;  // (where it goes, the buffer)
  try {
    nlohmann::json header = nlohmann::json::parse(bytes);
    std::string kind = header.at("kind").get<std::string>();
    if (kind == "stop") {
      message.kind = GroupMessageKind::kStop;
      return message;
    }
    if (kind == "idle") return message;
    if (kind == "denoise") {
      message.kind = GroupMessageKind::kDenoise;
      RETURN_IF_ERROR(ReadInput(header, device, message.input, tensors));
    } else if (kind == "batch_step") {
      message.kind = GroupMessageKind::kBatchStep;
      GroupBatchStep& step = message.batch_step;
      step.batch = header.at("batch").get<int64_t>();
      step.members = header.at("members").get<std::vector<int64_t>>();
      const auto& admitted = header.at("admitted");
      // Sized first: ReadInput keeps pointers into the inputs.
      step.admitted.resize(admitted.size());
      for (size_t i = 0; i < admitted.size(); ++i) {
        step.admitted[i].first = admitted[i].at("id").get<int64_t>();
        RETURN_IF_ERROR(ReadInput(admitted[i], device, step.admitted[i].second, tensors));
      }
    } else {
      return absl::InternalError("group message of unknown kind " + kind);
    }
  } catch (const std::exception& e) {
    return absl::InternalError(std::string("malformed group message: ") + e.what());
  }
  for (auto& [slot, tensor] : tensors) {
    RETURN_IF_ERROR(comm.Broadcast(tensor, 0));
    *slot = std::move(tensor);
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
