#include "common/private_module.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

namespace dgrid {
namespace {

std::vector<std::string> Candidates(const PrivateModuleSpec& spec) {
  std::vector<std::string> out;
  if (const char* env = std::getenv(spec.env_var); env != nullptr && *env != '\0') {
    out.emplace_back(env);
  }
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    const std::string exe(self);
    out.push_back(exe.substr(0, exe.rfind('/')) + "/" + spec.file_name);
  }
  if (spec.build_path != nullptr) out.emplace_back(spec.build_path);
  out.emplace_back(spec.file_name);
  return out;
}

}  // namespace

PrivateModule LoadPrivateModule(const PrivateModuleSpec& spec,
                                const std::function<const void*(void* entry)>& open) {
  PrivateModule m;
  for (const std::string& path : Candidates(spec)) {
    // Paths that do not exist are skipped quietly; bare names go to the loader's search path.
    if (path.find('/') != std::string::npos && access(path.c_str(), R_OK) != 0) continue;
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      m.error += std::string(dlerror()) + "; ";
      continue;
    }
    void* entry = dlsym(handle, spec.entry_symbol);
    const void* api = entry != nullptr ? open(entry) : nullptr;
    if (api == nullptr) {
      m.error += path + ": not a matching dgrid " + spec.description + "; ";
      continue;
    }
    m.api = api;
    return m;
  }
  m.error = std::string("cannot load the ") + spec.description + " " + spec.file_name + " (" +
            m.error + "set " + spec.env_var + " to its path)";
  return m;
}

}  // namespace dgrid
