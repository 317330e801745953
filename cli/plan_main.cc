// dgrid-plan: `dgrid plan` on its own (torch-free, builds in a minute), for tools and tests that
// only plan, such as tools/gen_choosing_settings.py. The same flags and output as `dgrid plan`.
#include <string>
#include <vector>

#include "cli/commands.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  return dgrid::cli::PlanCommand(args);
}
