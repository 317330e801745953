// The dgrid command. Subcommands are added by their issues (generate, up, plan, bench).
#include <cstdio>
#include <string>

#include "common/logging.h"

namespace {

void PrintUsage() {
  std::printf(
      "usage: dgrid <command> [flags]\n\n"
      "commands:\n"
      "  version    print the dgrid version\n"
      "  help       this text\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "help";
  if (command == "version") {
    std::printf("dgrid 0.1.0\n");
    return 0;
  }
  if (command == "help" || command == "--help") {
    PrintUsage();
    return 0;
  }
  std::fprintf(stderr, "dgrid: unknown command '%s'\n\n", command.c_str());
  PrintUsage();
  return 2;
}
