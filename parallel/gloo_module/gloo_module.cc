// libdgrid_gloo_module.so: Debian's Gloo behind the function table of parallel/gloo_module_api.h
// (why a module: see that header). Gloo reports everything by throwing (::gloo::IoException for
// timeouts and broken connections, EnforceNotMet for misuse); every entry point catches it and
// returns a GlooResult.
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "parallel/gloo_module_api.h"

namespace dgrid::gloo_module {
namespace {

std::chrono::milliseconds Millis(int64_t ms) {
  return std::chrono::milliseconds(std::max<int64_t>(1, ms));
}

// gloo::rendezvous::Store over the caller's store, with a key prefix. Gloo wants exceptions; the
// result of the failure is kept for the caller.
class CallbackStore final : public ::gloo::rendezvous::Store {
 public:
  CallbackStore(const StoreCallbacks& store, std::string prefix, int64_t timeout_ms)
      : store_(store), prefix_(std::move(prefix)), timeout_ms_(timeout_ms) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    std::string error;
    Check(store_.set(store_.self, prefix_ + key, std::string(data.begin(), data.end()), &error),
          error);
  }
  std::vector<char> get(const std::string& key) override {
    std::string value, error;
    Check(store_.get(store_.self, prefix_ + key, timeout_ms_, &value, &error), error);
    return std::vector<char>(value.begin(), value.end());
  }
  void wait(const std::vector<std::string>& keys) override {
    wait(keys, std::chrono::milliseconds(timeout_ms_));
  }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    for (const auto& key : keys) {
      std::string value, error;
      Check(store_.get(store_.self, prefix_ + key, timeout.count(), &value, &error), error);
    }
  }

  GlooResult failure() const { return failure_; }

 private:
  void Check(GlooResult result, const std::string& error) {
    if (result == kOk) return;
    failure_ = result;
    throw ::gloo::IoException("rendezvous store: " + error);
  }

  StoreCallbacks store_;
  std::string prefix_;
  int64_t timeout_ms_;
  GlooResult failure_ = kOk;
};

// Result of an exception thrown by Gloo.
GlooResult FromException(const std::exception& e, std::string* error) {
  *error = e.what();
  if (error->find("imed out") != std::string::npos) return kTimedOut;
  if (dynamic_cast<const ::gloo::IoException*>(&e) != nullptr) return kUnavailable;
  return kInternal;
}

template <typename Fn>
GlooResult Guard(std::string* error, Fn&& fn) {
  try {
    fn();
    return kOk;
  } catch (const std::exception& e) {
    return FromException(e, error);
  } catch (...) {
    *error = "unknown exception";
    return kInternal;
  }
}

std::shared_ptr<::gloo::Context>& Ctx(void* context) {
  return *static_cast<std::shared_ptr<::gloo::Context>*>(context);
}

template <typename T>
void Sum(void* c, const void* a, const void* b, size_t n) {
  auto* out = static_cast<T*>(c);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}

template <typename T>
void AllreduceSum(const std::shared_ptr<::gloo::Context>& context, void* data, size_t numel,
                  int64_t timeout_ms) {
  ::gloo::AllreduceOptions opts(context);
  opts.setOutput(static_cast<T*>(data), numel);
  opts.setReduceFunction(&Sum<T>);
  opts.setTimeout(Millis(timeout_ms));
  ::gloo::allreduce(opts);
}

void* CreateDevice(const std::string& hostname, std::string* error) {
  try {
    ::gloo::transport::tcp::attr attr;
    attr.hostname = hostname;
    return new std::shared_ptr<::gloo::transport::Device>(
        ::gloo::transport::tcp::CreateDevice(attr));
  } catch (const std::exception& e) {
    *error = e.what();
    return nullptr;
  }
}

void DestroyDevice(void* device) {
  delete static_cast<std::shared_ptr<::gloo::transport::Device>*>(device);
}

void* Connect(void* device, const StoreCallbacks& store, const std::string& prefix, int rank,
              int size, int64_t timeout_ms, GlooResult* result, std::string* error) {
  CallbackStore adapter(store, prefix, timeout_ms);
  auto& dev = *static_cast<std::shared_ptr<::gloo::transport::Device>*>(device);
  auto context = std::make_shared<::gloo::rendezvous::Context>(rank, size);
  *result = Guard(error, [&] {
    context->setTimeout(Millis(timeout_ms));
    context->connectFullMesh(adapter, dev);
  });
  if (*result != kOk) {
    if (adapter.failure() != kOk) *result = adapter.failure();
    return nullptr;
  }
  return new std::shared_ptr<::gloo::Context>(std::move(context));
}

void DestroyContext(void* context) {
  delete static_cast<std::shared_ptr<::gloo::Context>*>(context);
}

GlooResult Alltoall(void* context, const void* in, void* out, size_t nbytes, int64_t timeout_ms,
                    std::string* error) {
  return Guard(error, [&] {
    ::gloo::AlltoallOptions opts(Ctx(context));
    opts.setInput(static_cast<uint8_t*>(const_cast<void*>(in)), nbytes);
    opts.setOutput(static_cast<uint8_t*>(out), nbytes);
    opts.setTimeout(Millis(timeout_ms));
    ::gloo::alltoall(opts);
  });
}

GlooResult Allgather(void* context, const void* in, void* out, size_t in_bytes, int64_t timeout_ms,
                     std::string* error) {
  return Guard(error, [&] {
    ::gloo::AllgatherOptions opts(Ctx(context));
    opts.setInput(static_cast<uint8_t*>(const_cast<void*>(in)), in_bytes);
    opts.setOutput(static_cast<uint8_t*>(out), in_bytes * Ctx(context)->size);
    opts.setTimeout(Millis(timeout_ms));
    ::gloo::allgather(opts);
  });
}

GlooResult AllreduceSumEntry(void* context, void* data, size_t numel, GlooDType dtype,
                             int64_t timeout_ms, std::string* error) {
  return Guard(error, [&] {
    switch (dtype) {
      case kFloat32:
        return AllreduceSum<float>(Ctx(context), data, numel, timeout_ms);
      case kFloat64:
        return AllreduceSum<double>(Ctx(context), data, numel, timeout_ms);
      case kInt32:
        return AllreduceSum<int32_t>(Ctx(context), data, numel, timeout_ms);
      case kInt64:
        return AllreduceSum<int64_t>(Ctx(context), data, numel, timeout_ms);
    }
    throw std::invalid_argument("allreduce_sum: unknown dtype");
  });
}

GlooResult Broadcast(void* context, void* data, size_t nbytes, int root, int64_t timeout_ms,
                     std::string* error) {
  return Guard(error, [&] {
    ::gloo::BroadcastOptions opts(Ctx(context));
    opts.setOutput(static_cast<uint8_t*>(data), nbytes);
    opts.setRoot(root);
    opts.setTimeout(Millis(timeout_ms));
    ::gloo::broadcast(opts);
  });
}

GlooResult SendRecv(void* context, const void* send, size_t send_bytes, int dst, uint64_t send_slot,
                    void* recv, size_t recv_bytes, int src, uint64_t recv_slot, int64_t timeout_ms,
                    std::string* error) {
  return Guard(error, [&] {
    auto& ctx = Ctx(context);
    auto out = ctx->createUnboundBuffer(const_cast<void*>(send), send_bytes);
    auto in = ctx->createUnboundBuffer(recv, recv_bytes);
    in->recv(src, recv_slot);
    out->send(dst, send_slot);
    auto deadline = std::chrono::steady_clock::now() + Millis(timeout_ms);
    in->waitRecv(deadline);
    out->waitSend(deadline);
  });
}

GlooResult Barrier(void* context, int64_t timeout_ms, std::string* error) {
  return Guard(error, [&] {
    ::gloo::BarrierOptions opts(Ctx(context));
    opts.setTimeout(Millis(timeout_ms));
    ::gloo::barrier(opts);
  });
}

const GlooModuleApi kApi = {kGlooModuleVersion, &CreateDevice, &DestroyDevice, &Connect,
                            &DestroyContext,    &Alltoall,     &Allgather,     &AllreduceSumEntry,
                            &Broadcast,         &SendRecv,     &Barrier};

}  // namespace
}  // namespace dgrid::gloo_module

extern "C" __attribute__((visibility("default"))) const dgrid::gloo_module::GlooModuleApi*
dgrid_gloo_module() {
  return &dgrid::gloo_module::kApi;
}
