// Small POSIX file helpers for code that links LibTorch.
//
// Why not std::filesystem: the LibTorch of the Python torch wheel (libtorch.so) exports its own
// copy of libstdc++'s std::filesystem functions (status, remove_all, canonical, create_directories,
// ...), built against an older libstdc++. In a process that links libtorch.so those definitions win
// over libstdc++'s, and at least std::filesystem::remove_all then jumps to address 0 (seen with g++
// 12 and torch 2.11). Code in a LibTorch-linked binary should use these helpers (or plain POSIX)
// instead.
//
// All functions are thread-safe (no shared state); none throws.
#ifndef DGRID_COMMON_FILES_H_
#define DGRID_COMMON_FILES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid {

// stat() follows symlinks, so a symlink to a file (as in a Hugging Face cache snapshot) is a file.
bool IsRegularFile(const std::string& path);
bool IsDirectory(const std::string& path);

// Names of the entries of `dir` (without "." and ".."), sorted. NOT_FOUND etc. from errno.
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir);

// The whole file. NOT_FOUND / PERMISSION_DENIED from errno; DATA_LOSS on a read error.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `contents` to `path` through a temporary file in the same folder and rename(), so a
// reader sees either no file or the whole of it. Errors from errno, naming the path.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// "a" + "/" + "b", without doubling a trailing slash of `a`; `b` absolute replaces `a`.
std::string JoinPath(absl::string_view a, absl::string_view b);

// Absolute (relative to the working directory) and lexically normalised: "." and empty components
// dropped, ".." folded, no trailing slash. Symlinks are not resolved.
std::string AbsolutePath(absl::string_view path);

}  // namespace dgrid

#endif  // DGRID_COMMON_FILES_H_
