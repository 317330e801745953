// Test helpers: write safetensors files (valid or deliberately broken) and scratch folders.
#ifndef DGRID_TESTS_UNIT_COMMON_SAFETENSORS_WRITER_H_
#define DGRID_TESTS_UNIT_COMMON_SAFETENSORS_WRITER_H_

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace dgrid::testing {

struct TensorSpec {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::string bytes;  // little-endian element bytes
};

// The bytes of `values` as stored in memory (little-endian on every host dgrid supports).
template <typename T>
std::string RawBytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// 8-byte little-endian length, `header`, then `data`.
inline std::string FileBytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Header JSON and data section of a well-formed file holding `tensors` back to back, padded with
// spaces to a multiple of 8 as the reference writer does.
inline std::string SafetensorsBytes(const std::vector<TensorSpec>& tensors,
                                    const nlohmann::json& metadata = nullptr) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const TensorSpec& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return FileBytes(text, data);
}

inline void WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                             const nlohmann::json& metadata = nullptr) {
  WriteFile(path, SafetensorsBytes(tensors, metadata));
}

// std::filesystem is avoided: libtorch.so exports a broken copy of it (see common/files.h).

// mkdir -p for an absolute path.
inline void MakeDirs(const std::string& path) {
  std::string prefix;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    prefix = absl::StrCat(prefix, "/", part);
    ::mkdir(prefix.c_str(), 0755);
  }
}

// rm -rf (does not follow symlinks).
inline void RemoveTree(const std::string& path) {
  ::nftw(
      path.c_str(),
      [](const char* p, const struct stat*, int, struct FTW*) {
        ::remove(p);  // Best effort: keep walking whatever happens.
        return 0;
      },
      16, FTW_DEPTH | FTW_PHYS);
}

// A fresh folder under the test's temporary directory, removed when the object dies.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag) {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string temp = ::testing::TempDir();
    while (temp.size() > 1 && temp.back() == '/') temp.pop_back();
    path_ = absl::StrCat(temp, "/dgrid_", tag, "_", info ? info->name() : "x", "_", ::getpid());
    RemoveTree(path_);
    MakeDirs(path_);
  }
  ~ScratchDir() { RemoveTree(path_); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_COMMON_SAFETENSORS_WRITER_H_
