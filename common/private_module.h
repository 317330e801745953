// Loading a dgrid plug-in module: a shared library that wraps a third-party library whose symbols
// clash with another copy in the process (Debian's SentencePiece with its bundled protobuf,
// Debian's Gloo with LibTorch's). The module is opened with RTLD_LOCAL | RTLD_DEEPBIND, so it binds
// to its own dependencies, and exposes one C entry function returning a table of function pointers.
//
// Thread-safe; callers keep the result in a function-local static (modules are never unloaded).
#ifndef DGRID_COMMON_PRIVATE_MODULE_H_
#define DGRID_COMMON_PRIVATE_MODULE_H_

#include <functional>
#include <string>

namespace dgrid {

struct PrivateModuleSpec {
  const char* env_var;       // Environment variable naming the module's path; checked first.
  const char* file_name;     // e.g. "libdgrid_spm.so": looked for next to the running program,
  const char* build_path;    // then here (the build tree; may be null),
                             // then through the dynamic loader's search path.
  const char* entry_symbol;  // extern "C" function returning the module's API table.
  const char* description;   // e.g. "SentencePiece module", for errors.
};

struct PrivateModule {
  const void* api = nullptr;  // The entry function's result; null when no candidate was accepted.
  std::string error;          // Why, when api is null.
};

// Tries the candidates in order. `open` gets each candidate's entry symbol (non-null), calls it
// with its real type and returns the API table, or null when the table does not match (version).
PrivateModule LoadPrivateModule(const PrivateModuleSpec& spec,
                                const std::function<const void*(void* entry)>& open);

}  // namespace dgrid

#endif  // DGRID_COMMON_PRIVATE_MODULE_H_
