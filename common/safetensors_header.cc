// Validation of safetensors headers. This file must stay free of LibTorch (tests/fuzz links it
// alone).
//
// The checks follow the reference reader (safetensors/src/tensor.rs, Metadata::validate) except
// that gaps between tensors are tolerated: dgrid only needs every tensor to lie inside the file and
// no two tensors to share bytes.
#include "common/safetensors_header.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace dgrid {
namespace {

using Json = nlohmann::json;

// Like dgrid::Annotate (common/status.cc), kept local so that this file links without status.cc.
absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

struct DtypeEntry {
  SafetensorsDtype dtype;
  absl::string_view name;
  uint64_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {SafetensorsDtype::kF64, "F64", 8},        {SafetensorsDtype::kF32, "F32", 4},
    {SafetensorsDtype::kF16, "F16", 2},        {SafetensorsDtype::kBF16, "BF16", 2},
    {SafetensorsDtype::kI64, "I64", 8},        {SafetensorsDtype::kI32, "I32", 4},
    {SafetensorsDtype::kI16, "I16", 2},        {SafetensorsDtype::kI8, "I8", 1},
    {SafetensorsDtype::kU8, "U8", 1},          {SafetensorsDtype::kBool, "BOOL", 1},
    {SafetensorsDtype::kF8E4M3, "F8_E4M3", 1},
};

const DtypeEntry& Entry(SafetensorsDtype dtype) {
  for (const DtypeEntry& entry : kDtypes) {
    if (entry.dtype == dtype) return entry;
  }
  return kDtypes[0];  // Unreachable: every enumerator is in the table.
}

// Deepest bracket nesting of `text`, ignoring brackets inside strings. nlohmann's DOM parser keeps
// its own stack, but refusing absurd nesting up front bounds the work for hostile headers.
int MaxNestingDepth(absl::string_view text) {
  int depth = 0;
  int max_depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Reads a non-negative JSON integer. nlohmann stores non-negative integers as number_unsigned, so a
// signed integer here is negative.
absl::Status ReadUnsigned(const Json& value, uint64_t* out, absl::string_view what) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return absl::OkStatus();
  }
  if (value.is_number_integer()) {
    return InvalidArgument(what, " is negative (", value.get<int64_t>(), ")");
  }
  return InvalidArgument(what, " is not an integer (", value.type_name(), ")");
}

absl::StatusOr<SafetensorsTensorInfo> ParseTensor(const std::string& name, const Json& entry) {
  SafetensorsTensorInfo info;
  info.name = name;
  if (!entry.is_object())
    return InvalidArgument("entry is a ", entry.type_name(), ", not an object");

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return InvalidArgument("'dtype' is missing or not a string");
  }
  ASSIGN_OR_RETURN(info.dtype, ParseSafetensorsDtype(dtype_it->get_ref<const std::string&>()));

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return InvalidArgument("'shape' is missing or not an array");
  }
  uint64_t numel = 1;
  bool overflow = false;
  for (size_t i = 0; i < shape_it->size(); ++i) {
    uint64_t dim = 0;
    RETURN_IF_ERROR(ReadUnsigned((*shape_it)[i], &dim, absl::StrCat("shape[", i, "]")));
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return InvalidArgument("shape[", i, "] = ", dim, " is too large");
    }
    info.shape.push_back(static_cast<int64_t>(dim));
    overflow = overflow || __builtin_mul_overflow(numel, dim, &numel);
  }
  uint64_t expected_bytes = 0;
  overflow =
      overflow || __builtin_mul_overflow(numel, SafetensorsDtypeSize(info.dtype), &expected_bytes);
  // A zero dimension makes the product 0 whatever the others are, as in the reference reader.
  if (numel == 0 && !overflow) expected_bytes = 0;
  if (overflow) {
    return InvalidArgument("shape ", ShapeString(info.shape), " overflows 64 bits of bytes");
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return InvalidArgument("'data_offsets' is missing or not a [begin, end] pair");
  }
  RETURN_IF_ERROR(ReadUnsigned((*offsets_it)[0], &info.begin, "data_offsets[0]"));
  RETURN_IF_ERROR(ReadUnsigned((*offsets_it)[1], &info.end, "data_offsets[1]"));
  if (info.end < info.begin) {
    return InvalidArgument("data_offsets [", info.begin, ", ", info.end, "] end before they begin");
  }
  if (info.end - info.begin != expected_bytes) {
    return InvalidArgument("data_offsets [", info.begin, ", ", info.end, "] span ",
                           info.end - info.begin, " bytes but ", SafetensorsDtypeName(info.dtype),
                           " ", ShapeString(info.shape), " needs ", expected_bytes);
  }
  return info;
}

absl::Status ParseMetadata(const Json& value, std::map<std::string, std::string>* out) {
  if (!value.is_object()) return InvalidArgument("'__metadata__' is not an object");
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return InvalidArgument("'__metadata__' value '", key, "' is not a string");
    }
    (*out)[key] = item.get<std::string>();
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t SafetensorsDtypeSize(SafetensorsDtype dtype) { return Entry(dtype).size; }

absl::string_view SafetensorsDtypeName(SafetensorsDtype dtype) { return Entry(dtype).name; }

absl::StatusOr<SafetensorsDtype> ParseSafetensorsDtype(absl::string_view name) {
  for (const DtypeEntry& entry : kDtypes) {
    if (entry.name == name) return entry.dtype;
  }
  return InvalidArgument("unsupported dtype '", name, "'");
}

bool IsConvertibleFloat(SafetensorsDtype dtype) {
  return dtype == SafetensorsDtype::kF64 || dtype == SafetensorsDtype::kF32 ||
         dtype == SafetensorsDtype::kF16 || dtype == SafetensorsDtype::kBF16;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size,
                                                         absl::string_view file_name) {
  if (file_size < 8) {
    return DataLoss(file_name, ": file is ", file_size,
                    " bytes, too short for the 8-byte header length (truncated?)");
  }
  if (prefix.size() < 8) {
    return InvalidArgument(file_name, ": only ", prefix.size(), " bytes of the file were given");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<unsigned char>(prefix[i]);
  }
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return InvalidArgument(file_name, ": header length ", header_len, " exceeds the limit of ",
                           kMaxSafetensorsHeaderBytes, " bytes");
  }
  if (header_len > file_size - 8) {
    return DataLoss(file_name, ": header length ", header_len, " runs past the end of the ",
                    file_size, "-byte file (truncated?)");
  }
  if (prefix.size() < 8 + header_len) {
    return InvalidArgument(file_name, ": only ", prefix.size(),
                           " bytes of the file were given, the ", "header needs ", 8 + header_len);
  }
  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  const uint64_t data_size = file_size - header.data_offset;

  absl::string_view text = prefix.substr(8, header_len);
  if (MaxNestingDepth(text) > kMaxSafetensorsHeaderDepth) {
    return InvalidArgument(file_name, ": header JSON nests deeper than ",
                           kMaxSafetensorsHeaderDepth, " levels");
  }
  // No exceptions: a parse error gives a "discarded" value.
  Json json = Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return InvalidArgument(file_name, ": header is not valid JSON");
  if (!json.is_object()) {
    return InvalidArgument(file_name, ": header is a JSON ", json.type_name(), ", not an object");
  }

  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      RETURN_IF_ERROR(WithContext(ParseMetadata(entry, &header.metadata), file_name));
      continue;
    }
    absl::StatusOr<SafetensorsTensorInfo> info = ParseTensor(name, entry);
    if (!info.ok()) {
      return WithContext(info.status(), absl::StrCat(file_name, ": tensor '", name, "'"));
    }
    if (info->end > data_size) {
      return DataLoss(file_name, ": tensor '", name, "': data_offsets [", info->begin, ", ",
                      info->end, "] run past the end of the ", data_size,
                      "-byte data section (truncated?)");
    }
    header.tensors.push_back(*std::move(info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  // Empty tensors occupy no bytes and may sit anywhere; every other tensor must start at or after
  // the end of all tensors before it.
  const SafetensorsTensorInfo* previous = nullptr;
  for (const SafetensorsTensorInfo& info : header.tensors) {
    if (info.begin == info.end) continue;
    if (previous != nullptr && info.begin < previous->end) {
      return InvalidArgument(file_name, ": tensor '", info.name, "' [", info.begin, ", ", info.end,
                             ") overlaps tensor '", previous->name, "' [", previous->begin, ", ",
                             previous->end, ")");
    }
    if (previous == nullptr || info.end > previous->end) previous = &info;
  }
  return header;
}

}  // namespace dgrid
