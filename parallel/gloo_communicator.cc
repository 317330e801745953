// Gloo backend of Communicator: CPU tensors over Gloo's TCP transport.
//
// Gloo itself lives in libdgrid_gloo_module.so (parallel/gloo_module_api.h says why), loaded once
// per process with RTLD_LOCAL | RTLD_DEEPBIND; this file keeps the tensor side: argument checks,
// the rendezvous store (parallel/tcp_store.h, served to the module through callbacks; Debian's Gloo
// of 2022 has no TCP store), key prefixes per Split, and the mapping of failures to statuses. Any
// failure of a Gloo call breaks the communicator (Gloo's state after a failed collective is
// unknown), so later calls fail fast with the same code.
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/private_module.h"
#include "parallel/communicator.h"
#include "parallel/gloo_module_api.h"
#include "parallel/tcp_store.h"
#include "parallel/tensor_checks.h"

namespace dgrid {
namespace {

namespace gm = gloo_module;
using parallel_internal::CheckAllGather;
using parallel_internal::CheckAllToAll;
using parallel_internal::CheckRank;
using parallel_internal::CheckSameKind;
using parallel_internal::CheckSplitRanks;
using parallel_internal::CheckTensor;

// Slots of point-to-point messages: a prefix byte Gloo's collectives do not use, then a per-peer
// sequence number (both sides count the messages between them the same way).
constexpr uint64_t kP2PSlotBase = uint64_t{0x5d} << 56;

struct LoadedModule {
  const gm::GlooModuleApi* api = nullptr;
  std::string error;
};

const LoadedModule& Module() {
  static const LoadedModule module = [] {
    const PrivateModuleSpec spec = {"DGRID_GLOO_MODULE", "libdgrid_gloo_module.so",
#ifdef DGRID_GLOO_MODULE_PATH
                                    DGRID_GLOO_MODULE_PATH,
#else
                                    nullptr,
#endif
                                    gm::kGlooModuleEntry, "Gloo module"};
    const PrivateModule loaded = LoadPrivateModule(spec, [](void* entry) -> const void* {
      using Entry = const gm::GlooModuleApi* (*)();
      const gm::GlooModuleApi* api = reinterpret_cast<Entry>(entry)();
      return api != nullptr && api->version == gm::kGlooModuleVersion ? api : nullptr;
    });
    return LoadedModule{static_cast<const gm::GlooModuleApi*>(loaded.api), loaded.error};
  }();
  return module;
}

int64_t Millis(absl::Duration d) { return std::max<int64_t>(1, absl::ToInt64Milliseconds(d)); }

absl::Status FromResult(gm::GlooResult result, absl::string_view what, const std::string& error) {
  std::string text = absl::StrCat("gloo ", what, ": ", error);
  switch (result) {
    case gm::kOk:
      return absl::OkStatus();
    case gm::kTimedOut:
      return absl::DeadlineExceededError(text);
    case gm::kUnavailable:
      return absl::UnavailableError(text);
    case gm::kInternal:
      break;
  }
  return absl::InternalError(text);
}

// The store callbacks over a TcpStore.
gm::GlooResult ToResult(const absl::Status& s) {
  if (s.ok()) return gm::kOk;
  if (s.code() == absl::StatusCode::kDeadlineExceeded) return gm::kTimedOut;
  if (s.code() == absl::StatusCode::kUnavailable) return gm::kUnavailable;
  return gm::kInternal;
}

gm::GlooResult StoreSet(void* self, const std::string& key, const std::string& value,
                        std::string* error) {
  absl::Status s = static_cast<TcpStore*>(self)->Set(key, value);
  if (!s.ok()) *error = std::string(s.message());
  return ToResult(s);
}

gm::GlooResult StoreGet(void* self, const std::string& key, int64_t timeout_ms, std::string* value,
                        std::string* error) {
  absl::StatusOr<std::string> v =
      static_cast<TcpStore*>(self)->Get(key, absl::Milliseconds(timeout_ms));
  if (!v.ok()) {
    *error = std::string(v.status().message());
    return ToResult(v.status());
  }
  *value = *std::move(v);
  return gm::kOk;
}

// The shared pieces of a world communicator and its splits. The device goes after every context
// (contexts hold it too).
struct GlooWorld {
  ~GlooWorld() {
    if (device != nullptr) api->destroy_device(device);
  }
  const gm::GlooModuleApi* api = nullptr;
  std::shared_ptr<Rendezvous> rendezvous;
  void* device = nullptr;
};

class GlooCommunicator final : public Communicator {
 public:
  ~GlooCommunicator() override { world_->api->destroy_context(context_); }

  // Builds a full-mesh context of `size` ranks over the keys under `prefix`.
  static absl::StatusOr<std::unique_ptr<Communicator>> Connect(std::shared_ptr<GlooWorld> world,
                                                               const std::string& prefix, int rank,
                                                               int size, absl::Duration timeout) {
    gm::StoreCallbacks store{world->rendezvous->store.get(), &StoreSet, &StoreGet};
    gm::GlooResult result = gm::kOk;
    std::string error;
    void* context = world->api->connect(world->device, store, prefix, rank, size, Millis(timeout),
                                        &result, &error);
    if (context == nullptr) return FromResult(result, "rendezvous", error);
    return std::unique_ptr<Communicator>(
        new GlooCommunicator(std::move(world), context, prefix, rank, size, timeout));
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::string_view backend() const override { return "gloo"; }
  bool healthy() const override { return !broken_.load(); }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(const std::vector<int>& ranks) override {
    if (absl::Status s = Usable(); !s.ok()) return s;
    if (absl::Status s = CheckSplitRanks(ranks, size_); !s.ok()) return s;
    // Every rank counts the splits, so all members of one Split agree on its prefix.
    std::string prefix = absl::StrCat(prefix_, "split", split_count_++, "/");
    int new_rank = -1;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] == rank_) new_rank = static_cast<int>(i);
    }
    if (new_rank < 0) return std::unique_ptr<Communicator>();
    auto sub = Connect(world_, prefix, new_rank, static_cast<int>(ranks.size()), timeout_);
    if (!sub.ok()) MarkBroken(sub.status());
    return sub;
  }

  absl::Status AllToAll(const at::Tensor& in, at::Tensor& out) override {
    if (absl::Status s = CheckCpu("AllToAll", in, out); !s.ok()) return s;
    if (absl::Status s = CheckAllToAll(in, out, size_); !s.ok()) return s;
    if (in.numel() == 0) return absl::OkStatus();
    if (size_ == 1) return Local("AllToAll", [&] { out.copy_(in); });
    return Call("AllToAll", [&](std::string* error) {
      return api()->alltoall(context_, in.data_ptr(), out.data_ptr(), in.nbytes(), Millis(timeout_),
                             error);
    });
  }

  absl::Status AllGather(const at::Tensor& in, at::Tensor& out) override {
    if (absl::Status s = CheckCpu("AllGather", in, out); !s.ok()) return s;
    if (absl::Status s = CheckAllGather(in, out, size_); !s.ok()) return s;
    if (in.numel() == 0) return absl::OkStatus();
    if (size_ == 1) return Local("AllGather", [&] { out.copy_(in); });
    return Call("AllGather", [&](std::string* error) {
      return api()->allgather(context_, in.data_ptr(), out.data_ptr(), in.nbytes(),
                              Millis(timeout_), error);
    });
  }

  absl::Status AllReduceSum(at::Tensor& tensor) override {
    if (absl::Status s = CheckCpu("AllReduceSum", tensor, tensor); !s.ok()) return s;
    gm::GlooDType dtype;
    switch (tensor.scalar_type()) {
      case at::kFloat:
        dtype = gm::kFloat32;
        break;
      case at::kDouble:
        dtype = gm::kFloat64;
        break;
      case at::kInt:
        dtype = gm::kInt32;
        break;
      case at::kLong:
        dtype = gm::kInt64;
        break;
      case at::kHalf:
      case at::kBFloat16: {
        // Summed in float32 (the module is torch-free); one rounding at the end.
        at::Tensor wide;
        if (absl::Status s = Local("AllReduceSum", [&] { wide = tensor.to(at::kFloat); });
            !s.ok()) {
          return s;
        }
        if (absl::Status s = AllReduceSum(wide); !s.ok()) return s;
        return Local("AllReduceSum", [&] { tensor.copy_(wide); });
      }
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "AllReduceSum: dtype ", c10::toString(tensor.scalar_type()), " not supported"));
    }
    if (tensor.numel() == 0 || size_ == 1) return Usable();
    return Call("AllReduceSum", [&](std::string* error) {
      return api()->allreduce_sum(context_, tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                                  dtype, Millis(timeout_), error);
    });
  }

  absl::Status Broadcast(at::Tensor& tensor, int root) override {
    if (absl::Status s = CheckCpu("Broadcast", tensor, tensor); !s.ok()) return s;
    if (absl::Status s = CheckRank("Broadcast", root, size_); !s.ok()) return s;
    return BroadcastRaw("Broadcast", tensor.data_ptr(), tensor.nbytes(), root);
  }

  absl::Status SendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src) override {
    if (absl::Status s = CheckCpu("SendRecv", send, recv); !s.ok()) return s;
    if (absl::Status s = CheckRank("SendRecv", dst, size_); !s.ok()) return s;
    if (absl::Status s = CheckRank("SendRecv", src, size_); !s.ok()) return s;
    if ((dst == rank_) != (src == rank_)) {
      return absl::InvalidArgumentError(
          "SendRecv: a rank sends to itself only if it receives from itself");
    }
    if (dst == rank_) return Local("SendRecv", [&] { recv.copy_(send); });
    return Call("SendRecv", [&](std::string* error) {
      return api()->sendrecv(context_, send.data_ptr(), send.nbytes(), dst,
                             kP2PSlotBase + send_seq_[dst]++, recv.data_ptr(), recv.nbytes(), src,
                             kP2PSlotBase + recv_seq_[src]++, Millis(timeout_), error);
    });
  }

  absl::Status BroadcastBytes(std::string& bytes, int root) override {
    if (absl::Status s = CheckRank("BroadcastBytes", root, size_); !s.ok()) return s;
    uint64_t length = bytes.size();
    if (absl::Status s = BroadcastRaw("BroadcastBytes", &length, sizeof(length), root); !s.ok()) {
      return s;
    }
    if (rank_ != root) bytes.assign(length, '\0');
    return BroadcastRaw("BroadcastBytes", bytes.data(), bytes.size(), root);
  }

  absl::Status Barrier() override {
    if (size_ == 1) return Usable();
    return Call("Barrier", [&](std::string* error) {
      return api()->barrier(context_, Millis(timeout_), error);
    });
  }

 private:
  GlooCommunicator(std::shared_ptr<GlooWorld> world, void* context, std::string prefix, int rank,
                   int size, absl::Duration timeout)
      : world_(std::move(world)),
        context_(context),
        prefix_(std::move(prefix)),
        rank_(rank),
        size_(size),
        timeout_(timeout),
        send_seq_(size, 0),
        recv_seq_(size, 0) {}

  const gm::GlooModuleApi* api() const { return world_->api; }

  absl::Status CheckCpu(absl::string_view op, const at::Tensor& a, const at::Tensor& b) {
    if (absl::Status s = Usable(); !s.ok()) return s;
    if (absl::Status s = CheckTensor(op, "tensor", a); !s.ok()) return s;
    if (absl::Status s = CheckTensor(op, "tensor", b); !s.ok()) return s;
    if (absl::Status s = CheckSameKind(op, a, b); !s.ok()) return s;
    if (!a.device().is_cpu()) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": gloo needs CPU tensors, got ", a.device().str()));
    }
    return absl::OkStatus();
  }

  absl::Status BroadcastRaw(absl::string_view op, void* ptr, size_t nbytes, int root) {
    if (nbytes == 0 || size_ == 1) return Usable();
    return Call(op, [&](std::string* error) {
      return api()->broadcast(context_, ptr, nbytes, root, Millis(timeout_), error);
    });
  }

  absl::Status Usable() const {
    if (!broken_.load()) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    return absl::Status(failure_.code(), absl::StrCat("communicator broken by an earlier failure: ",
                                                      failure_.message()));
  }

  void MarkBroken(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (!broken_.load()) failure_ = status;
    broken_.store(true);
  }

  // Local work (a group of one, a self send): only LibTorch can throw.
  template <typename Fn>
  absl::Status Local(absl::string_view op, Fn&& fn) {
    if (absl::Status s = Usable(); !s.ok()) return s;
    try {
      fn();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat(op, ": ", e.what()));
    }
  }

  // Runs a module call; any failure breaks the communicator.
  template <typename Fn>
  absl::Status Call(absl::string_view op, Fn&& fn) {
    if (absl::Status s = Usable(); !s.ok()) return s;
    std::string error;
    absl::Status status = FromResult(fn(&error), op, error);
    if (!status.ok()) MarkBroken(status);
    return status;
  }

  std::shared_ptr<GlooWorld> world_;
  void* context_;
  std::string prefix_;
  const int rank_;
  const int size_;
  const absl::Duration timeout_;
  int split_count_ = 0;
  std::vector<uint64_t> send_seq_;
  std::vector<uint64_t> recv_seq_;
  std::atomic<bool> broken_{false};
  mutable absl::Mutex mu_;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    const CommunicatorOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: rank ", options.rank, " outside a group of ", options.size));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("gloo: timeout must be positive");
  }
  const LoadedModule& module = Module();
  if (module.api == nullptr) return absl::FailedPreconditionError(module.error);
  auto world = std::make_shared<GlooWorld>();
  world->api = module.api;
  auto rendezvous = JoinRendezvous(options.leader_address, options.rank, options.timeout);
  if (!rendezvous.ok()) return rendezvous.status();
  world->rendezvous = *std::move(rendezvous);
  std::string error;
  world->device = module.api->create_device(world->rendezvous->store->local_host(), &error);
  if (world->device == nullptr) {
    return absl::UnavailableError(absl::StrCat("gloo: cannot create the TCP device on ",
                                               world->rendezvous->store->local_host(), ": ",
                                               error));
  }
  return GlooCommunicator::Connect(std::move(world), "world/", options.rank, options.size,
                                   options.timeout);
}

}  // namespace dgrid
