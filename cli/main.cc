// The dgrid command: thin dispatch to the subcommands of cli/commands.h.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace {

void PrintUsage() {
  std::printf(
      "usage: dgrid <command> [flags]\n\n"
      "commands:\n"
      "  up         start a local cluster on loopback (Ctrl-C stops it)\n"
      "  generate   make one image on a cluster (--local: all stages in this process)\n"
      "  models     list the models a cluster serves\n"
      "  bench      bench compare a.json b.json: changes between two benchmark reports\n"
      "  plan       GPU topology + model + request mix -> denoiser group layouts\n"
      "  version    print the dgrid version\n"
      "  help       this text\n\n"
      "`dgrid <command> --help` lists a command's flags.\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "help";
  const std::vector<std::string> args(argv + std::min(argc, 2), argv + argc);
  if (command == "generate") return dgrid::cli::GenerateCommand(args);
  if (command == "up") return dgrid::cli::UpCommand(args);
  if (command == "models") return dgrid::cli::ModelsCommand(args);
  if (command == "bench") return dgrid::cli::BenchCompareCommand(args);
  if (command == "plan") return dgrid::cli::PlanCommand(args);
  if (command == "version") {
    std::printf("dgrid 0.1.0\n");
    return 0;
  }
  if (command == "help" || command == "--help" || command == "-h") {
    PrintUsage();
    return 0;
  }
  std::fprintf(stderr, "dgrid: unknown command '%s'\n\n", command.c_str());
  PrintUsage();
  return 2;
}
