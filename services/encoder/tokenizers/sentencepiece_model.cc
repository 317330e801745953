// Forwards to libdgrid_spm.so, loaded once with RTLD_LOCAL | RTLD_DEEPBIND (see
// sentencepiece_module_api.h for why SentencePiece lives in its own module).
#include "services/encoder/tokenizers/sentencepiece_model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

#include "services/encoder/tokenizers/sentencepiece_module_api.h"

namespace dgrid::encoder {
namespace {

struct Module {
  const SentencePieceModuleApi* api = nullptr;
  std::string error;
};

// Candidates, in order: $DGRID_SPM_MODULE, next to the running program, the build tree this was
// built in, then the dynamic loader's own search path.
std::vector<std::string> ModuleCandidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("DGRID_SPM_MODULE"); env != nullptr && *env != '\0') {
    out.emplace_back(env);
  }
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    std::string dir(self);
    out.push_back(dir.substr(0, dir.rfind('/')) + "/libdgrid_spm.so");
  }
#ifdef DGRID_SPM_MODULE_PATH
  out.emplace_back(DGRID_SPM_MODULE_PATH);
#endif
  out.emplace_back("libdgrid_spm.so");
  return out;
}

const Module& LoadModule() {
  static const Module module = [] {
    Module m;
    for (const std::string& path : ModuleCandidates()) {
      if (path.find('/') != std::string::npos && access(path.c_str(), R_OK) != 0) continue;
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle == nullptr) {
        m.error += std::string(dlerror()) + "; ";
        continue;
      }
      using Entry = const SentencePieceModuleApi* (*)();
      auto entry = reinterpret_cast<Entry>(dlsym(handle, kSentencePieceModuleEntry));
      const SentencePieceModuleApi* api = entry != nullptr ? entry() : nullptr;
      if (api == nullptr || api->version != kSentencePieceModuleVersion) {
        m.error += path + ": not a matching dgrid SentencePiece module; ";
        continue;
      }
      m.api = api;
      return m;
    }
    m.error = "cannot load the SentencePiece module libdgrid_spm.so (" + m.error +
              "set DGRID_SPM_MODULE to its path)";
    return m;
  }();
  return module;
}

}  // namespace

struct SentencePieceModel::Impl {
  const SentencePieceModuleApi* api = nullptr;
  void* model = nullptr;
};

SentencePieceModel::SentencePieceModel() : impl_(std::make_unique<Impl>()) {}

SentencePieceModel::~SentencePieceModel() {
  if (impl_->model != nullptr) impl_->api->destroy(impl_->model);
}

bool SentencePieceModel::LoadFromSerialized(const std::string& serialized, std::string* error) {
  const Module& module = LoadModule();
  if (module.api == nullptr) {
    *error = module.error;
    return false;
  }
  if (impl_->model == nullptr) {
    impl_->api = module.api;
    impl_->model = module.api->create();
  }
  return impl_->api->load(impl_->model, serialized, error);
}

// The methods below are only called after a successful LoadFromSerialized.
bool SentencePieceModel::Encode(std::string_view text, std::vector<int>* ids,
                                std::string* error) const {
  return impl_->api->encode(impl_->model, text, ids, error);
}

bool SentencePieceModel::EncodeAsPieces(std::string_view text, std::vector<std::string>* pieces,
                                        std::string* error) const {
  return impl_->api->encode_pieces(impl_->model, text, pieces, error);
}

float SentencePieceModel::GetScore(int id) const { return impl_->api->score(impl_->model, id); }

std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  return impl_->api->decode(impl_->model, ids);
}

int SentencePieceModel::PieceToId(const std::string& piece) const {
  return impl_->api->piece_to_id(impl_->model, piece);
}
std::string SentencePieceModel::IdToPiece(int id) const {
  return impl_->api->id_to_piece(impl_->model, id);
}
bool SentencePieceModel::IsControl(int id) const {
  return impl_->api->is_control(impl_->model, id);
}
int SentencePieceModel::GetPieceSize() const { return impl_->api->size(impl_->model); }
int SentencePieceModel::unk_id() const { return impl_->api->unk_id(impl_->model); }

}  // namespace dgrid::encoder
