#include "parallel/tensor_checks.h"

#include <set>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"

namespace dgrid::parallel_internal {
namespace {

std::string Shape(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) absl::StrAppend(&s, i ? ", " : "", t.size(i));
  return s + "]";
}

}  // namespace

absl::Status CheckTensor(absl::string_view op, absl::string_view name, const at::Tensor& t) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " undefined"));
  if (t.dim() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must have a dimension"));
  }
  if (!t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is not contiguous"));
  }
  return absl::OkStatus();
}

absl::Status CheckSameKind(absl::string_view op, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": dtype mismatch (",
                                                   c10::toString(a.scalar_type()), " vs ",
                                                   c10::toString(b.scalar_type()), ")"));
  }
  if (a.device() != b.device()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": tensors on different devices (", a.device().str(), " vs ", b.device().str(), ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckAllToAll(const at::Tensor& in, const at::Tensor& out, int size) {
  if (absl::Status s = CheckTensor("AllToAll", "in", in); !s.ok()) return s;
  if (absl::Status s = CheckTensor("AllToAll", "out", out); !s.ok()) return s;
  if (absl::Status s = CheckSameKind("AllToAll", in, out); !s.ok()) return s;
  if (in.sizes() != out.sizes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllToAll: in ", Shape(in), " and out ", Shape(out), " differ"));
  }
  if (in.size(0) % size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("AllToAll: dim 0 of ", Shape(in),
                                                   " is not divisible by the group size ", size));
  }
  return absl::OkStatus();
}

absl::Status CheckAllGather(const at::Tensor& in, const at::Tensor& out, int size) {
  if (absl::Status s = CheckTensor("AllGather", "in", in); !s.ok()) return s;
  if (absl::Status s = CheckTensor("AllGather", "out", out); !s.ok()) return s;
  if (absl::Status s = CheckSameKind("AllGather", in, out); !s.ok()) return s;
  bool ok = in.dim() == out.dim() && out.size(0) == in.size(0) * size;
  for (int64_t d = 1; ok && d < in.dim(); ++d) ok = in.size(d) == out.size(d);
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat("AllGather: out ", Shape(out), " is not ", size,
                                                   " x in ", Shape(in), " along dim 0"));
  }
  return absl::OkStatus();
}

absl::Status CheckRank(absl::string_view op, int rank, int size) {
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": rank ", rank, " outside a group of ", size));
  }
  return absl::OkStatus();
}

absl::Status CheckSplitRanks(const std::vector<int>& ranks, int size) {
  if (ranks.empty()) return absl::InvalidArgumentError("Split: no ranks");
  std::set<int> seen;
  for (int r : ranks) {
    if (absl::Status s = CheckRank("Split", r, size); !s.ok()) return s;
    if (!seen.insert(r).second) {
      return absl::InvalidArgumentError(absl::StrCat("Split: rank ", r, " given twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace dgrid::parallel_internal
