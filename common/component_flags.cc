#include "common/component_flags.h"

#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid {

absl::StatusOr<std::string> ParsePrecisionName(absl::string_view text, absl::string_view flag) {
  const std::string v = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (v == "float32" || v == "fp32") return std::string("float32");
  if (v == "bfloat16" || v == "bf16") return std::string("bfloat16");
  if (v == "float16" || v == "fp16") return std::string("float16");
  return InvalidArgument(flag, ": '", text,
                         "' must be float32, bfloat16 or float16 (or fp32, bf16, ", "fp16)");
}

absl::StatusOr<std::string> ParseDeviceName(absl::string_view text, absl::string_view flag) {
  const absl::string_view v = absl::StripAsciiWhitespace(text);
  int64_t index = 0;
  if (v == "cpu" || v == "cuda" ||
      (absl::StartsWith(v, "cuda:") && absl::SimpleAtoi(v.substr(5), &index) && index >= 0)) {
    return std::string(v);
  }
  return InvalidArgument(flag, ": '", text, "' must be cpu, cuda or cuda:N");
}

absl::StatusOr<std::string> ParseComponentDeviceName(absl::string_view text,
                                                     absl::string_view flag) {
  if (absl::StripAsciiWhitespace(text) == kOffloadDevice) return std::string(kOffloadDevice);
  absl::StatusOr<std::string> device = ParseDeviceName(text, flag);
  if (!device.ok()) {
    return InvalidArgument(flag, ": '", text, "' must be cpu, cuda, cuda:N or offload");
  }
  return device;
}

std::vector<Setting> ComponentSettings(absl::string_view who) {
  return {
      {"text_encoder_device", Setting::kString, "",
       absl::StrCat(who,
                    ": device of the text encoders (cpu, cuda, cuda:N), or offload: on --device "
                    "only while they encode, in host memory otherwise; empty: --device")},
      {"text_encoder_precision", Setting::kString, "",
       absl::StrCat(who,
                    ": dtype of the text encoders (float32, bfloat16, float16); empty: --dtype")},
      {"vae_device", Setting::kString, "",
       absl::StrCat(who,
                    ": device of the VAE (cpu, cuda, cuda:N), or offload: on --device only while "
                    "it decodes, in host memory otherwise; empty: --device")},
      {"vae_precision", Setting::kString, "",
       absl::StrCat(who, ": dtype of the VAE (float32, bfloat16, float16); empty: --dtype")},
  };
}

absl::StatusOr<ComponentFlags> ReadComponentFlags(const Config& config) {
  ComponentFlags out;
  struct Field {
    const char* name;
    const char* flag;
    bool device;
    std::string* value;
  };
  for (const Field& f :
       {Field{"text_encoder_device", "--text-encoder-device", true, &out.text_encoder_device},
        Field{"text_encoder_precision", "--text-encoder-precision", false,
              &out.text_encoder_precision},
        Field{"vae_device", "--vae-device", true, &out.vae_device},
        Field{"vae_precision", "--vae-precision", false, &out.vae_precision}}) {
    ASSIGN_OR_RETURN(const std::string value, config.GetString(f.name));
    if (value.empty()) continue;
    if (f.device) {
      ASSIGN_OR_RETURN(*f.value, ParseComponentDeviceName(value, f.flag));
    } else {
      ASSIGN_OR_RETURN(*f.value, ParsePrecisionName(value, f.flag));
    }
  }
  return out;
}

ComponentPlacement PlaceComponent(const std::string& component_device,
                                  const std::string& component_precision, const std::string& device,
                                  const std::string& dtype) {
  ComponentPlacement out;
  out.offload = component_device == kOffloadDevice;
  out.device = !component_device.empty() && !out.offload ? component_device : device;
  if (!component_precision.empty()) {
    out.dtype = component_precision;
  } else if (!dtype.empty()) {
    out.dtype = dtype;
  } else if (out.device == "cpu" || out.device.empty()) {
    out.dtype = "float32";
  }
  return out;
}

}  // namespace dgrid
