#include "parallel/tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dgrid {
namespace {

constexpr uint8_t kOpSet = 'S';
constexpr uint8_t kOpGet = 'G';
constexpr uint8_t kCodeOk = 0;
constexpr uint8_t kCodeTimedOut = 1;
// Keys and values are small (addresses, ids, request headers); anything larger is a corrupt peer.
constexpr uint64_t kMaxKeyBytes = 4096;
constexpr uint64_t kMaxValueBytes = uint64_t{64} << 20;

// Blocking read/write of a whole buffer on the server side (a shutdown() of the socket ends them).
bool ReadFull(int fd, void* data, size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = ::recv(fd, p, size, 0);
    if (n == 0) return false;
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool WriteFull(int fd, const void* data, size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Milliseconds left until `deadline` for poll(), at least 0.
int PollMillis(absl::Time deadline) {
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
}

}  // namespace

absl::Status SplitHostPort(absl::string_view address, std::string* host, int* port) {
  size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "' is not host:port"));
  }
  absl::string_view h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "' has a bad port"));
  }
  *host = std::string(h);
  *port = p;
  return absl::OkStatus();
}

// ----------------------------------------------------------------------------------------------
// Server

absl::StatusOr<std::unique_ptr<TcpStoreServer>> TcpStoreServer::Start(int port) {
  std::unique_ptr<TcpStoreServer> server(new TcpStoreServer());
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool v6 = fd >= 0;
  if (!v6) fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  server->listen_fd_ = fd;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc;
  if (v6) {
    int zero = 0;  // Dual stack: IPv4 peers too.
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(static_cast<uint16_t>(port));
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } else {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  }
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("rendezvous store cannot bind port ", port, ": ", std::strerror(errno)));
  }
  if (::listen(fd, 128) != 0) {
    return absl::InternalError(absl::StrCat("listen: ", std::strerror(errno)));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  server->port_ =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (::pipe2(server->wake_pipe_, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

TcpStoreServer::~TcpStoreServer() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (int fd : conn_fds_) ::shutdown(fd, SHUT_RDWR);
  }
  if (wake_pipe_[1] >= 0) {
    char c = 0;
    (void)!::write(wake_pipe_[1], &c, 1);
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  {
    absl::MutexLock lock(&mu_);
    threads.swap(conn_threads_);
  }
  for (auto& t : threads) t.join();
  for (int fd : conn_fds_) ::close(fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  for (int fd : wake_pipe_) {
    if (fd >= 0) ::close(fd);
  }
}

void TcpStoreServer::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    int rc = ::poll(fds, 2, -1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 || (fds[1].revents & POLLIN)) return;
    if (!(fds[0].revents & POLLIN)) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      ::close(fd);
      return;
    }
    conn_fds_.push_back(fd);
    conn_threads_.emplace_back([this, fd] { Serve(fd); });
  }
}

void TcpStoreServer::Serve(int fd) {
  while (true) {
    uint8_t op = 0;
    uint32_t key_size = 0;
    uint64_t n = 0;
    if (!ReadFull(fd, &op, 1) || !ReadFull(fd, &key_size, 4) || key_size > kMaxKeyBytes) break;
    std::string key(key_size, '\0');
    if (!ReadFull(fd, key.data(), key_size) || !ReadFull(fd, &n, 8)) break;
    if (op == kOpSet) {
      if (n > kMaxValueBytes) break;
      std::string value(n, '\0');
      if (!ReadFull(fd, value.data(), n)) break;
      {
        absl::MutexLock lock(&mu_);
        data_[key] = std::move(value);
      }
      if (!WriteFull(fd, &kCodeOk, 1)) break;
    } else if (op == kOpGet) {
      absl::Time deadline = absl::Now() + absl::Milliseconds(static_cast<int64_t>(n));
      std::string value;
      bool found = false;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || data_.count(key) > 0;
        };
        mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
        auto it = data_.find(key);
        if (it != data_.end()) {
          found = true;
          value = it->second;
        }
        if (stopping_ && !found) break;
      }
      if (!found) {
        if (!WriteFull(fd, &kCodeTimedOut, 1)) break;
        continue;
      }
      uint64_t size = value.size();
      if (!WriteFull(fd, &kCodeOk, 1) || !WriteFull(fd, &size, 8) ||
          !WriteFull(fd, value.data(), value.size())) {
        break;
      }
    } else {
      break;
    }
  }
  // The fd is closed by the destructor (it may still be in conn_fds_ for shutdown()).
  ::shutdown(fd, SHUT_RDWR);
}

// ----------------------------------------------------------------------------------------------
// Client

absl::StatusOr<std::unique_ptr<TcpStore>> TcpStore::Connect(absl::string_view address,
                                                            absl::Duration timeout) {
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(address, &host, &port); !s.ok()) return s;
  absl::Time deadline = absl::Now() + timeout;
  std::string last_error = "not tried";
  while (true) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* list = nullptr;
    int gai = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &list);
    if (gai != 0) {
      last_error = ::gai_strerror(gai);
    } else {
      for (addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
        int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
          ::freeaddrinfo(list);
          std::unique_ptr<TcpStore> store(new TcpStore());
          store->fd_ = fd;
          int one = 1;
          ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          sockaddr_storage local{};
          socklen_t len = sizeof(local);
          char buf[INET6_ADDRSTRLEN] = {0};
          if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
            if (local.ss_family == AF_INET) {
              ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&local)->sin_addr, buf,
                          sizeof(buf));
            } else {
              ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr, buf,
                          sizeof(buf));
            }
          }
          store->local_host_ = buf;
          return store;
        }
        last_error = std::strerror(errno);
        ::close(fd);
      }
      ::freeaddrinfo(list);
    }
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("rendezvous store at ", address,
                                                  " not reachable within ",
                                                  absl::FormatDuration(timeout), ": ", last_error));
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status TcpStore::WriteAll(const void* data, size_t size, absl::Time deadline) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    pollfd pfd{fd_, POLLOUT, 0};
    int rc = ::poll(&pfd, 1, PollMillis(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0) return absl::DeadlineExceededError("rendezvous store: write timed out");
    ssize_t n = ::send(fd_, p, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::UnavailableError(
          absl::StrCat("rendezvous store connection lost: ", std::strerror(errno)));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status TcpStore::ReadAll(void* data, size_t size, absl::Time deadline) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    pollfd pfd{fd_, POLLIN, 0};
    int rc = ::poll(&pfd, 1, PollMillis(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0) return absl::DeadlineExceededError("rendezvous store: read timed out");
    ssize_t n = ::recv(fd_, p, size, MSG_DONTWAIT);
    if (n == 0) return absl::UnavailableError("rendezvous store connection closed by the leader");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::UnavailableError(
          absl::StrCat("rendezvous store connection lost: ", std::strerror(errno)));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status TcpStore::Set(absl::string_view key, absl::string_view value) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  uint32_t key_size = static_cast<uint32_t>(key.size());
  uint64_t n = value.size();
  std::string header;
  header.push_back(static_cast<char>(kOpSet));
  header.append(reinterpret_cast<const char*>(&key_size), 4);
  header.append(key.data(), key.size());
  header.append(reinterpret_cast<const char*>(&n), 8);
  if (absl::Status s = WriteAll(header.data(), header.size(), deadline); !s.ok()) return s;
  if (absl::Status s = WriteAll(value.data(), value.size(), deadline); !s.ok()) return s;
  uint8_t code = 0;
  if (absl::Status s = ReadAll(&code, 1, deadline); !s.ok()) return s;
  if (code != kCodeOk) return absl::InternalError("rendezvous store rejected a set");
  return absl::OkStatus();
}

absl::StatusOr<std::string> TcpStore::Get(absl::string_view key, absl::Duration timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  // The server answers "timed out" at `timeout`; the slack covers the round trip.
  absl::Time deadline = absl::Now() + timeout + absl::Seconds(5);
  uint32_t key_size = static_cast<uint32_t>(key.size());
  uint64_t millis = static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Milliseconds(timeout)));
  std::string header;
  header.push_back(static_cast<char>(kOpGet));
  header.append(reinterpret_cast<const char*>(&key_size), 4);
  header.append(key.data(), key.size());
  header.append(reinterpret_cast<const char*>(&millis), 8);
  if (absl::Status s = WriteAll(header.data(), header.size(), deadline); !s.ok()) return s;
  uint8_t code = 0;
  if (absl::Status s = ReadAll(&code, 1, deadline); !s.ok()) return s;
  if (code == kCodeTimedOut) {
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous: key '", key, "' not set within ", absl::FormatDuration(timeout)));
  }
  uint64_t size = 0;
  if (absl::Status s = ReadAll(&size, 8, deadline); !s.ok()) return s;
  if (size > kMaxValueBytes) return absl::InternalError("rendezvous store: value too large");
  std::string value(size, '\0');
  if (absl::Status s = ReadAll(value.data(), size, deadline); !s.ok()) return s;
  return value;
}

}  // namespace dgrid

namespace dgrid {

absl::StatusOr<std::shared_ptr<Rendezvous>> JoinRendezvous(absl::string_view leader_address,
                                                           int rank, absl::Duration timeout) {
  auto rendezvous = std::make_shared<Rendezvous>();
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(leader_address, &host, &port); !s.ok()) return s;
  if (rank == 0) {
    auto server = TcpStoreServer::Start(port);
    if (!server.ok()) return server.status();
    rendezvous->server = *std::move(server);
  }
  // Rank 0 connects through the leader address too, so that local_host() is the address of the
  // interface its peers reach it on.
  auto store = TcpStore::Connect(leader_address, timeout);
  if (!store.ok()) return store.status();
  rendezvous->store = *std::move(store);
  return rendezvous;
}

}  // namespace dgrid
