// A minimal key-value store over TCP for the rendezvous of a denoiser group.
//
// Rank 0 runs a TcpStoreServer on the port of the group's leader address; every rank (rank 0
// included) talks to it through a TcpStore client. Keys are written once (Set) and read with a
// blocking Get that waits for the key up to a timeout. Gloo exchanges its pair addresses through
// it, NCCL its unique id. Debian's Gloo (2022) has no TCPStore, hence this one.
//
// Wire format (one request at a time per connection, all integers little-endian as on x86-64):
//   request:  u8 op ('S' set, 'G' get), u32 key length, key, u64 n, then for 'S' n value bytes,
//             for 'G' n = timeout in milliseconds.
//   response: u8 code (0 ok, 1 timed out), for a successful 'G' also u64 length and the value.
//
// Threads: the server has an accept thread and one thread per connection; the client is
// thread-safe (a mutex serialises its requests). Errors: DEADLINE_EXCEEDED when the server cannot
// be reached or a key does not appear in time, UNAVAILABLE when the connection breaks.
#ifndef DGRID_PARALLEL_TCP_STORE_H_
#define DGRID_PARALLEL_TCP_STORE_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace dgrid {

// Splits "host:port" ("[v6]:port" too). INVALID_ARGUMENT when the port is missing or bad.
absl::Status SplitHostPort(absl::string_view address, std::string* host, int* port);

class TcpStoreServer {
 public:
  // Listens on all interfaces at `port` (0 picks a free one).
  static absl::StatusOr<std::unique_ptr<TcpStoreServer>> Start(int port);
  // Closes every connection and joins the threads.
  ~TcpStoreServer();

  int port() const { return port_; }

 private:
  TcpStoreServer() = default;
  void AcceptLoop();
  void Serve(int fd);

  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  int port_ = 0;
  std::thread accept_thread_;

  absl::Mutex mu_;
  std::map<std::string, std::string> data_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int> conn_fds_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> conn_threads_ ABSL_GUARDED_BY(mu_);
};

class TcpStore {
 public:
  // Connects to `address` ("host:port"), retrying until `timeout` while the server is not up yet.
  static absl::StatusOr<std::unique_ptr<TcpStore>> Connect(absl::string_view address,
                                                           absl::Duration timeout);
  ~TcpStore();

  absl::Status Set(absl::string_view key, absl::string_view value);
  // Waits up to `timeout` for `key` to be set, then returns its value.
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Duration timeout);

  // The local IP address of the connection to the server: the address peers can reach this
  // process at (used as Gloo's listening address).
  const std::string& local_host() const { return local_host_; }

 private:
  TcpStore() = default;
  // Reads/writes the whole buffer before `deadline`.
  absl::Status WriteAll(const void* data, size_t size, absl::Time deadline);
  absl::Status ReadAll(void* data, size_t size, absl::Time deadline);

  std::mutex mu_;
  int fd_ = -1;
  std::string local_host_;
};

// The rendezvous of one group: rank 0 serves the store on the leader address's port, every rank
// is a client of it. Shared by a communicator and the communicators Split from it.
struct Rendezvous {
  std::unique_ptr<TcpStoreServer> server;  // Rank 0 only; declared first so it outlives `store`.
  std::unique_ptr<TcpStore> store;
};

// Joins the rendezvous at `leader_address` within `timeout`.
absl::StatusOr<std::shared_ptr<Rendezvous>> JoinRendezvous(absl::string_view leader_address,
                                                           int rank, absl::Duration timeout);

}  // namespace dgrid

#endif  // DGRID_PARALLEL_TCP_STORE_H_
