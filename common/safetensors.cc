// Loading safetensors checkpoints into LibTorch tensors.
//
// Files are memory-mapped so that a large checkpoint is read once, straight from the page cache,
// and only the tensors asked for are touched. Each tensor is copied out of the mapping into memory
// that LibTorch owns before it is moved to the target device/dtype: a WeightMap must outlive the
// file object (and the mapping), and a tensor aliasing a private file mapping would also pin the
// page cache of the whole checkpoint.
#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/status.h"
#include "common/torch_status.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; dgrid copies it without byte swapping");

namespace dgrid {
namespace {

using Json = nlohmann::json;

constexpr absl::string_view kIndexSuffix = ".safetensors.index.json";
constexpr absl::string_view kFileSuffix = ".safetensors";

at::ScalarType ToScalarType(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kF64:
      return at::kDouble;
    case SafetensorsDtype::kF32:
      return at::kFloat;
    case SafetensorsDtype::kF16:
      return at::kHalf;
    case SafetensorsDtype::kBF16:
      return at::kBFloat16;
    case SafetensorsDtype::kI64:
      return at::kLong;
    case SafetensorsDtype::kI32:
      return at::kInt;
    case SafetensorsDtype::kI16:
      return at::kShort;
    case SafetensorsDtype::kI8:
      return at::kChar;
    case SafetensorsDtype::kU8:
      return at::kByte;
    case SafetensorsDtype::kBool:
      return at::kBool;
    // Raw bytes; no conversion to a wider type (kernels that use F8 weights read them as is).
    case SafetensorsDtype::kF8E4M3:
      return at::kFloat8_e4m3fn;
  }
  return at::kByte;
}

absl::StatusOr<at::ScalarType> ParseFloatingDtype(absl::string_view name) {
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "float16" || name == "fp16" || name == "half") return at::kHalf;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float64" || name == "double") return at::kDouble;
  return InvalidArgument("LoadOptions.floating_dtype '", name,
                         "' is not one of float32, float16, bfloat16, float64");
}

// LoadOptions turned into LibTorch values once per load.
struct Target {
  at::Device device = at::kCPU;
  std::optional<at::ScalarType> floating;
};

absl::StatusOr<Target> ResolveTarget(const LoadOptions& options) {
  Target target;
  // c10::Device's string constructor throws on a malformed name.
  ASSIGN_OR_RETURN(target.device,
                   TorchCall(absl::StrCat("LoadOptions.device '", options.device, "'"),
                             [&] { return at::Device(options.device); }));
  if (options.floating_dtype.has_value()) {
    ASSIGN_OR_RETURN(target.floating, ParseFloatingDtype(*options.floating_dtype));
  }
  return target;
}

// Copies one tensor out of the mapping, then moves it to the target device and dtype.
absl::StatusOr<at::Tensor> LoadTensor(const SafetensorsFile& file,
                                      const SafetensorsTensorInfo& info, const Target& target) {
  ASSIGN_OR_RETURN(absl::string_view bytes, file.Bytes(info.name));
  return TorchCall(absl::StrCat(file.path(), ": loading tensor '", info.name, "'"), [&] {
    at::Tensor host = at::empty(info.shape, at::TensorOptions().dtype(ToScalarType(info.dtype)));
    if (!bytes.empty()) std::memcpy(host.data_ptr(), bytes.data(), bytes.size());
    at::Tensor out = host.to(target.device);
    if (target.floating.has_value() && IsConvertibleFloat(info.dtype)) {
      out = out.to(*target.floating);
    }
    return out;
  });
}

absl::Status LoadAll(const SafetensorsFile& file, const Target& target, WeightMap* out) {
  for (const SafetensorsTensorInfo& info : file.header().tensors) {
    ASSIGN_OR_RETURN(at::Tensor tensor, LoadTensor(file, info, target));
    out->Insert(info.name, std::move(tensor));
  }
  return absl::OkStatus();
}

// Loads a sharded checkpoint described by `index_path` (a "*.safetensors.index.json").
absl::StatusOr<WeightMap> LoadIndexed(const std::string& folder, const std::string& index_path,
                                      const Target& target) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  Json json = Json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return InvalidArgument(index_path, ": not a JSON object");
  }
  auto map_it = json.find("weight_map");
  if (map_it == json.end() || !map_it->is_object()) {
    return InvalidArgument(index_path, ": 'weight_map' is missing or not an object");
  }
  // shard file -> tensor names the index assigns to it.
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [name, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return InvalidArgument(index_path, ": weight_map entry for tensor '", name,
                             "' is not a string");
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    // Shards sit beside the index; a path that leaves the folder is refused.
    if (shard_name.empty() || shard_name == "." || shard_name == ".." ||
        absl::StrContains(shard_name, '/')) {
      return InvalidArgument(index_path, ": tensor '", name, "' names shard '", shard_name,
                             "', which is not a plain file name");
    }
    shards[shard_name].push_back(name);
  }
  if (shards.empty()) return InvalidArgument(index_path, ": 'weight_map' is empty");

  const auto& weight_map = *map_it;
  WeightMap out(folder);
  for (const auto& [shard_name, names] : shards) {
    const std::string shard_path = JoinPath(folder, shard_name);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
    if (!file.ok()) {
      return Annotate(file.status(), absl::StrCat(index_path, ": shard '", shard_name,
                                                  "' (holding tensor '", names.front(), "')"));
    }
    for (const std::string& name : names) {
      if (!(*file)->Bytes(name).ok()) {
        return NotFound(shard_path, ": tensor '", name, "' is missing although ", index_path,
                        " assigns it to this shard");
      }
    }
    for (const SafetensorsTensorInfo& info : (*file)->header().tensors) {
      auto assigned = weight_map.find(info.name);
      if (assigned == weight_map.end() || *assigned != shard_name) {
        return InvalidArgument(shard_path, ": holds tensor '", info.name, "', which ", index_path,
                               " does not assign to this shard");
      }
    }
    RETURN_IF_ERROR(LoadAll(**file, target, &out));
  }
  return out;
}

// The single-file or indexed checkpoint to load from `folder`, as (path, is_index).
absl::StatusOr<std::pair<std::string, bool>> ChooseCheckpoint(const std::string& folder,
                                                              absl::string_view preferred_file) {
  if (!IsDirectory(folder)) return NotFound(folder, ": not a folder");
  if (!preferred_file.empty()) {
    const std::string preferred = JoinPath(folder, preferred_file);
    if (absl::EndsWith(preferred_file, ".index.json")) {
      if (IsRegularFile(preferred)) return std::make_pair(preferred, true);
    } else if (IsRegularFile(preferred + ".index.json")) {
      return std::make_pair(preferred + ".index.json", true);
    } else if (IsRegularFile(preferred)) {
      return std::make_pair(preferred, false);
    }
    return NotFound(folder, ": no checkpoint '", preferred_file, "' (nor its .index.json)");
  }

  ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(folder));
  std::vector<std::string> indexes;
  std::vector<std::string> files;
  for (const std::string& name : names) {
    // IsRegularFile follows symlinks: Hugging Face cache snapshots link every file into blobs/.
    if (!IsRegularFile(JoinPath(folder, name))) continue;
    if (absl::EndsWith(name, kIndexSuffix)) indexes.push_back(name);
    if (absl::EndsWith(name, kFileSuffix)) files.push_back(name);
  }
  if (indexes.size() == 1) return std::make_pair(JoinPath(folder, indexes[0]), true);
  if (indexes.size() > 1) {
    return InvalidArgument(folder, ": several checkpoint indexes (", absl::StrJoin(indexes, ", "),
                           "); name the one to load");
  }
  if (files.size() == 1) return std::make_pair(JoinPath(folder, files[0]), false);
  if (files.empty()) return NotFound(folder, ": no .safetensors checkpoint");
  return InvalidArgument(folder, ": several unindexed .safetensors files (",
                         absl::StrJoin(files, ", "), "); name the one to load");
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    absl::Status status = ErrnoStatus(errno, absl::StrCat("stat ", path));
    ::close(fd);
    return status;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(path, ": not a regular file");
  }
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ > 0) {
    void* map = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      absl::Status status = ErrnoStatus(errno, absl::StrCat("mmap ", path));
      ::close(fd);
      return status;
    }
    file->map_ = static_cast<const char*>(map);
  }
  // The mapping keeps the file's pages reachable; the descriptor is no longer needed.
  ::close(fd);

  ASSIGN_OR_RETURN(file->header_, ParseSafetensorsHeader(absl::string_view(file->map_, file->size_),
                                                         file->size_, path));
  for (size_t i = 0; i < file->header_.tensors.size(); ++i) {
    file->index_.emplace(file->header_.tensors[i].name, i);
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<char*>(map_), size_);
}

absl::StatusOr<absl::string_view> SafetensorsFile::Bytes(absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return NotFound(path_, ": no tensor '", name, "'");
  const SafetensorsTensorInfo& info = header_.tensors[it->second];
  // ParseSafetensorsHeader checked data_offset + end <= size_.
  return absl::string_view(map_ + header_.data_offset + info.begin, info.end - info.begin);
}

absl::StatusOr<WeightMap> LoadSafetensorsFile(const std::string& path, const LoadOptions& options) {
  ASSIGN_OR_RETURN(Target target, ResolveTarget(options));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  WeightMap out(path);
  RETURN_IF_ERROR(LoadAll(*file, target, &out));
  return out;
}

absl::StatusOr<WeightMap> LoadSafetensorsFolder(const std::string& folder,
                                                const LoadOptions& options,
                                                absl::string_view preferred_file) {
  ASSIGN_OR_RETURN(Target target, ResolveTarget(options));
  ASSIGN_OR_RETURN(auto choice, ChooseCheckpoint(folder, preferred_file));
  if (choice.second) return LoadIndexed(folder, choice.first, target);
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(choice.first));
  WeightMap out(folder);
  RETURN_IF_ERROR(LoadAll(*file, target, &out));
  return out;
}

}  // namespace dgrid
