// A UCX peer in its own process for the fault tests of ucx_channel_test (started with fork + exec,
// so the test process's UCX and LibTorch threads are not duplicated).
//
//   ucx_test_peer producer BYTES   publish BYTES bytes, print the TensorRef (hex) and wait for
//   stdin
//                                  to close
//   ucx_test_peer consumer         print "ready"; then for each TensorRef (hex) line on stdin:
//                                  print "pulling", fetch it, release it and print "fetched" (or
//                                  print the error and exit); a line "<hex> keep" is fetched but
//                                  not released; exit at the end of stdin
// UCX_TLS is taken from the environment.
#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/strings/escaping.h"
#include "transport/ucx/ucx_channel.h"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string mode = argv[1];
  dgrid::UcxChannelOptions options;
  options.inline_threshold_bytes = 0;
  auto channel = dgrid::UcxChannel::Create(options);
  if (!channel.ok()) {
    std::cerr << channel.status() << "\n";
    return 1;
  }
  if (mode == "producer" && argc == 3) {
    const int64_t bytes = std::atoll(argv[2]);
    auto ref = (*channel)->Publish(at::ones({bytes}, at::kByte));
    if (!ref.ok()) {
      std::cerr << ref.status() << "\n";
      return 1;
    }
    std::cout << absl::BytesToHexString(ref->SerializeAsString()) << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
    }
    return 0;
  }
  if (mode == "consumer") {
    std::cout << "ready" << std::endl;
    std::string hex;
    while (std::getline(std::cin, hex)) {
      const size_t space = hex.find(' ');
      const bool keep = space != std::string::npos && hex.substr(space + 1) == "keep";
      hex = hex.substr(0, space);
      dgrid::v1::TensorRef ref;
      if (!ref.ParseFromString(absl::HexStringToBytes(hex))) return 2;
      std::cout << "pulling" << std::endl;
      auto tensor = (*channel)->Fetch(ref, "tensor");
      if (!tensor.ok()) {
        std::cout << tensor.status().ToString() << std::endl;
        return 1;
      }
      if (!keep) (*channel)->Release(ref);
      std::cout << "fetched" << std::endl;
    }
    return 0;
  }
  return 2;
}
