// Paths of the planner tests' data: hand-written topology files next to the tests, bench reports.
#ifndef DGRID_TESTS_UNIT_PLANNER_TEST_PATHS_H_
#define DGRID_TESTS_UNIT_PLANNER_TEST_PATHS_H_

#include <cstdlib>
#include <string>

namespace dgrid::planner::testing {

inline std::string SourceDir() {
  const char* dir = std::getenv("DGRID_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

inline std::string TopologyPath(const std::string& name) {
  return SourceDir() + "/tests/unit/planner/topologies/" + name;
}

}  // namespace dgrid::planner::testing

#endif  // DGRID_TESTS_UNIT_PLANNER_TEST_PATHS_H_
