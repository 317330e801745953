#include "transport/ucx/ucx_worker.h"

#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14; older headers lack it
#endif

#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/ucx_status.h"
#include "transport/crc32c.h"

namespace dgrid::ucx {

class Endpoint {
 public:
  ucp_ep_h ep = nullptr;
  std::atomic<bool> failed{false};
};

namespace {

// Active-message id of lease releases (payload: the 8-byte lease id as the AM header).
constexpr unsigned kReleaseAmId = 0x64;
// How long the progress thread sleeps on the event fd before looking again (a safety net: UCX
// signals the fd for every event it arms).
constexpr int kIdleWaitMs = 100;
constexpr uintptr_t kPageBytes = 4096;
// Mapped ranges from this size up get their page tables filled before the copy.
constexpr size_t kPopulateFrom = size_t{1} << 20;
// How long a closing worker waits for its release messages to leave.
constexpr absl::Duration kReleaseDrain = absl::Seconds(1);
// After closing the endpoint of a timed-out transfer, how long its request may take to complete.
constexpr absl::Duration kCancelGrace = absl::Seconds(5);
// How long a closing worker that has talked to peers keeps progressing (and listening) after its
// endpoints are closed. A peer finishes its side of a connection's wire-up lazily, after the first
// exchange, by connecting back to this worker; if the worker is gone by then, UCX 1.13 asserts in
// that peer's error path (docs/transport.md). Lingering lets the wire-up finish, so the peer then
// sees an ordinary disconnect.
constexpr absl::Duration kLinger = absl::Milliseconds(200);

// Completion of one posted operation, shared by the poster and the UCX callback.
struct Completion {
  absl::Mutex mutex;
  bool done ABSL_GUARDED_BY(mutex) = false;
  ucs_status_t status ABSL_GUARDED_BY(mutex) = UCS_OK;
};

void OnOperationDone(void* request, ucs_status_t status, void* user_data) {
  auto* completion = static_cast<std::shared_ptr<Completion>*>(user_data);
  {
    absl::MutexLock lock(&(*completion)->mutex);
    (*completion)->done = true;
    (*completion)->status = status;
  }
  delete completion;
  ucp_request_free(request);
}

// A release message in flight: the header must outlive the send. It holds no endpoint: closing
// the endpoint (forced) cancels the send, which still completes through OnReleaseSent.
struct ReleaseSend {
  uint64_t lease_id;
  std::atomic<int>* in_flight;
};

void OnReleaseSent(void* request, ucs_status_t status, void* user_data) {
  auto* send = static_cast<ReleaseSend*>(user_data);
  if (status != UCS_OK) {
    DG_LOG_WARN("", "release of lease %d not delivered: %s", send->lease_id,
                ucs_status_string(status));
  }
  send->in_flight->fetch_sub(1);
  delete send;
  ucp_request_free(request);
}

}  // namespace

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(const WorkerOptions& options,
                                                             ReleaseHandler on_release) {
  std::unique_ptr<UcxWorker> worker(new UcxWorker());
  worker->release_handler_ = std::move(on_release);
  RETURN_IF_ERROR(worker->Init(options));
  return worker;
}

absl::Status UcxWorker::Init(const WorkerOptions& options) {
  ucp_config_t* config = nullptr;
  RETURN_IF_ERROR(UcxStatus(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read"));
  if (!options.tls.empty()) {
    const ucs_status_t s = ucp_config_modify(config, "TLS", options.tls.c_str());
    if (s != UCS_OK) {
      ucp_config_release(config);
      return UcxStatus(s, absl::StrCat("UCX_TLS=", options.tls));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  const ucs_status_t init = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  RETURN_IF_ERROR(UcxStatus(init, "ucp_init"));

  ucp_context_attr_t context_attr{};
  context_attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  RETURN_IF_ERROR(UcxStatus(ucp_context_query(context_, &context_attr), "ucp_context_query"));
  cuda_memory_ = (context_attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_MULTI;
  RETURN_IF_ERROR(UcxStatus(ucp_worker_create(context_, &worker_params, &worker_), "ucp_worker"));
  ucp_worker_attr_t worker_attr{};
  worker_attr.field_mask = UCP_WORKER_ATTR_FIELD_THREAD_MODE;
  RETURN_IF_ERROR(UcxStatus(ucp_worker_query(worker_, &worker_attr), "ucp_worker_query"));
  // Fetch and Release are posted from gRPC threads while the progress thread runs: without a
  // multi-threaded worker that would be a data race inside UCX.
  if (worker_attr.thread_mode != UCS_THREAD_MODE_MULTI) {
    return absl::FailedPreconditionError("this UCX build has no multi-threaded workers");
  }

  ucp_address_t* address = nullptr;
  size_t address_length = 0;
  RETURN_IF_ERROR(
      UcxStatus(ucp_worker_get_address(worker_, &address, &address_length), "worker address"));
  address_.assign(reinterpret_cast<const char*>(address), address_length);
  ucp_worker_release_address(worker_, address);

  ucp_am_handler_param_t am{};
  am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG;
  am.id = kReleaseAmId;
  am.cb = &UcxWorker::OnReleaseMessage;
  am.arg = this;
  RETURN_IF_ERROR(UcxStatus(ucp_worker_set_am_recv_handler(worker_, &am), "release handler"));

  RETURN_IF_ERROR(UcxStatus(ucp_worker_get_efd(worker_, &event_fd_), "ucp_worker_get_efd"));
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return ErrnoStatus(errno, "epoll_create1");
  epoll_event event{};
  event.events = EPOLLIN;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &event) != 0) {
    return ErrnoStatus(errno, "epoll_ctl");
  }
  progress_thread_ = std::thread([this] { ProgressLoop(); });
  return absl::OkStatus();
}

UcxWorker::~UcxWorker() {
  // Releases just sent get a moment to leave; closing the endpoints cancels the rest.
  const absl::Time deadline = absl::Now() + kReleaseDrain;
  while (releases_in_flight_.load() > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  {
    absl::MutexLock lock(&mutex_);
    endpoints_.clear();  // closes them (force) while the progress thread still runs
  }
  while (releases_in_flight_.load() > 0 && absl::Now() < deadline + kCancelGrace) {
    absl::SleepFor(absl::Milliseconds(1));  // the cancelled sends complete on the progress thread
  }
  if (progress_thread_.joinable() && talked_.load()) absl::SleepFor(kLinger);
  if (progress_thread_.joinable()) {
    stop_ = true;
    Wake();
    progress_thread_.join();
  }
  if (worker_ != nullptr) {
    while (ucp_worker_progress(worker_) != 0) {
    }
    ucp_worker_destroy(worker_);
  }
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

void UcxWorker::ProgressLoop() {
  while (!stop_.load()) {
    while (ucp_worker_progress(worker_) != 0) {
      if (!talked_.load(std::memory_order_relaxed)) talked_.store(true, std::memory_order_relaxed);
    }
    // Arm, then sleep until UCX has something (BUSY: events arrived meanwhile, progress again).
    if (ucp_worker_arm(worker_) == UCS_ERR_BUSY) continue;
    epoll_event event;
    epoll_wait(epoll_fd_, &event, 1, kIdleWaitMs);
  }
}

void UcxWorker::Wake() { ucp_worker_signal(worker_); }

absl::StatusOr<std::shared_ptr<Endpoint>> UcxWorker::Connect(absl::string_view worker_address) {
  absl::MutexLock lock(&mutex_);
  const std::string key(worker_address);
  auto it = endpoints_.find(key);
  if (it != endpoints_.end()) {
    if (!it->second->failed.load()) return it->second;
    endpoints_.erase(it);  // the peer died; a new endpoint tells whether it is back
  }
  // The deleter force-closes the endpoint; the Endpoint object itself stays (the error callback may
  // still hold its address) until it has no holder, and UCX no longer calls back after the close.
  auto ep = std::shared_ptr<Endpoint>(new Endpoint(), [this](Endpoint* e) {
    if (e->ep != nullptr) {
      ucp_request_param_t close{};
      close.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      close.flags = UCP_EP_CLOSE_FLAG_FORCE;
      ucs_status_ptr_t request = ucp_ep_close_nbx(e->ep, &close);
      if (UCS_PTR_IS_PTR(request)) ucp_request_free(request);
      Wake();
    }
    delete e;
  });
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(key.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &UcxWorker::OnEndpointError;
  params.err_handler.arg = ep.get();
  RETURN_IF_ERROR(UcxStatus(ucp_ep_create(worker_, &params, &ep->ep), "connect to producer"));
  endpoints_[key] = ep;
  return ep;
}

void UcxWorker::Forget(const std::shared_ptr<Endpoint>& ep) {
  ep->failed = true;
  absl::MutexLock lock(&mutex_);
  for (auto it = endpoints_.begin(); it != endpoints_.end(); ++it) {
    if (it->second == ep) {
      endpoints_.erase(it);
      return;
    }
  }
}

void UcxWorker::OnEndpointError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  static_cast<Endpoint*>(arg)->failed = true;
  DG_LOG_WARN("", "UCX peer failed: %s", ucs_status_string(status));
}

ucs_status_t UcxWorker::OnReleaseMessage(void* arg, const void* header, size_t header_length,
                                         void* /*data*/, size_t /*length*/,
                                         const ucp_am_recv_param_t* /*param*/) {
  auto* self = static_cast<UcxWorker*>(arg);
  uint64_t lease_id = 0;
  if (header_length == sizeof(lease_id) && self->release_handler_) {
    std::memcpy(&lease_id, header, sizeof(lease_id));
    self->release_handler_(lease_id);
  }
  return UCS_OK;
}

absl::Status UcxWorker::Get(absl::string_view worker_address, absl::string_view packed_rkey,
                            absl::Span<const GetRange> ranges, absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::shared_ptr<Endpoint> ep, Connect(worker_address));
  ucp_rkey_h rkey = nullptr;
  const ucs_status_t unpacked = ucp_ep_rkey_unpack(ep->ep, packed_rkey.data(), &rkey);
  if (unpacked != UCS_OK) {
    // Mostly a producer that is gone (its shared-memory segment no longer exists).
    Forget(ep);
    return absl::UnavailableError(UcxStatus(unpacked, "unpack remote key").message());
  }
  absl::Status status = DirectCopy(*ep, rkey, ranges);
  if (absl::IsUnimplemented(status)) {
    status = absl::OkStatus();
    for (const GetRange& range : ranges) {
      status = PostGet(ep, rkey, range, timeout);
      if (!status.ok()) break;
      if (range.crc32c != nullptr) *range.crc32c = Crc32c(0, range.dest, range.length);
    }
    if (status.ok()) ucx_gets_.fetch_add(1, std::memory_order_relaxed);
  } else if (status.ok()) {
    direct_copies_.fetch_add(1, std::memory_order_relaxed);
  }
  ucp_rkey_destroy(rkey);
  return status;
}

absl::Status UcxWorker::DirectCopy(const Endpoint& ep, ucp_rkey_h rkey,
                                   absl::Span<const GetRange> ranges) {
  std::vector<const char*> sources;
  for (const GetRange& range : ranges) {
    void* mapped = nullptr;
    if (ucp_rkey_ptr(rkey, range.remote_address, &mapped) != UCS_OK) {
      return absl::UnimplementedError("remote memory cannot be mapped here");
    }
    sources.push_back(static_cast<const char*>(mapped));
  }
  if (ep.failed.load()) return absl::UnavailableError("producer endpoint failed");
  // The segment was just attached: fill its page tables in one call instead of a fault per 4 KiB
  // page during the copy (64 MiB on the dev VM: ~40 ms instead of ~85). Only a hint; kernels
  // before 5.14 refuse it and the copy faults the pages in.
  for (size_t i = 0; i < ranges.size(); ++i) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(sources[i]) & ~(kPageBytes - 1);
    const uintptr_t end = reinterpret_cast<uintptr_t>(sources[i]) + ranges[i].length;
    if (ranges[i].length >= kPopulateFrom) {
      (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ);
    }
  }
  for (size_t i = 0; i < ranges.size(); ++i) {
    // Ranges are read in order: the acquire fence keeps the loads of a later range (the lease
    // word) after those of the earlier ones, as the producer's release fence orders its stores.
    if (i > 0) std::atomic_thread_fence(std::memory_order_acquire);
    if (ranges[i].crc32c != nullptr) {
      *ranges[i].crc32c = CopyWithCrc32c(0, ranges[i].dest, sources[i], ranges[i].length);
    } else {
      std::memcpy(ranges[i].dest, sources[i], ranges[i].length);
    }
  }
  return absl::OkStatus();
}

absl::Status UcxWorker::PostGet(std::shared_ptr<Endpoint>& ep, ucp_rkey_h rkey,
                                const GetRange& range, absl::Duration timeout) {
  auto completion = std::make_shared<Completion>();
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  params.cb.send = &OnOperationDone;
  params.user_data = new std::shared_ptr<Completion>(completion);
  ucs_status_ptr_t request =
      ucp_get_nbx(ep->ep, range.dest, range.length, range.remote_address, rkey, &params);
  ucs_status_t status;
  if (!UCS_PTR_IS_PTR(request)) {
    delete static_cast<std::shared_ptr<Completion>*>(params.user_data);
    status = UCS_PTR_STATUS(request);
  } else {
    Wake();
    absl::MutexLock lock(&completion->mutex);
    auto done = [&completion]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(completion->mutex) { return completion->done; };
    if (!completion->mutex.AwaitWithTimeout(absl::Condition(&done), timeout)) {
      // Closing the endpoint completes the request (with an error), so `dest` is no longer written
      // once we return.
      completion->mutex.Unlock();
      Forget(ep);
      ep.reset();
      completion->mutex.Lock();
      if (!completion->mutex.AwaitWithTimeout(absl::Condition(&done), kCancelGrace)) {
        DG_LOG_ERROR("", "a timed-out UCX get did not complete after its endpoint was closed");
      }
      // A peer that stops answering is treated as gone, like one that reset the connection.
      return absl::UnavailableError(absl::StrCat(
          "pull of ", range.length, " bytes took longer than ", absl::FormatDuration(timeout)));
    }
    status = completion->status;
  }
  if (status != UCS_OK) {
    Forget(ep);
    // Any failure of a get on a peer-checked endpoint means the peer (or the path to it) is gone.
    absl::Status error = UcxStatus(status, "pull from producer");
    if (!absl::IsUnavailable(error)) error = absl::UnavailableError(error.message());
    return error;
  }
  return absl::OkStatus();
}

void UcxWorker::SendRelease(absl::string_view worker_address, uint64_t lease_id) {
  absl::StatusOr<std::shared_ptr<Endpoint>> ep = Connect(worker_address);
  if (!ep.ok()) {
    DG_LOG_WARN("", "release of lease %d: %s", lease_id, ep.status().ToString());
    return;
  }
  auto* send = new ReleaseSend{lease_id, &releases_in_flight_};
  releases_in_flight_.fetch_add(1);
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  params.cb.send = &OnReleaseSent;
  params.user_data = send;
  ucs_status_ptr_t request = ucp_am_send_nbx((*ep)->ep, kReleaseAmId, &send->lease_id,
                                             sizeof(send->lease_id), nullptr, 0, &params);
  if (!UCS_PTR_IS_PTR(request)) {
    if (UCS_PTR_STATUS(request) != UCS_OK) {
      DG_LOG_WARN("", "release of lease %d: %s", lease_id,
                  ucs_status_string(UCS_PTR_STATUS(request)));
    }
    releases_in_flight_.fetch_sub(1);
    delete send;
    return;
  }
  Wake();
}

size_t UcxWorker::cached_endpoints() const {
  absl::MutexLock lock(&mutex_);
  return endpoints_.size();
}

}  // namespace dgrid::ucx
