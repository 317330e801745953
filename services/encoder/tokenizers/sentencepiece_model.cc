// Forwards to libdgrid_spm.so, loaded once with RTLD_LOCAL | RTLD_DEEPBIND (see
// sentencepiece_module_api.h for why SentencePiece lives in its own module).
#include "services/encoder/tokenizers/sentencepiece_model.h"

#include <unistd.h>

#include <cstdlib>
#include <mutex>

#include "common/private_module.h"
#include "services/encoder/tokenizers/sentencepiece_module_api.h"

// Defined only where a program links the module's code itself (the fuzz targets: they have no
// libprotobuf to clash with, and AddressSanitizer refuses RTLD_DEEPBIND); null everywhere else.
extern "C" const dgrid::encoder::SentencePieceModuleApi* dgrid_sentencepiece_module()
    __attribute__((weak));

namespace dgrid::encoder {
namespace {

struct Module {
  const SentencePieceModuleApi* api = nullptr;
  std::string error;
};

const Module& LoadModule() {
  static const Module module = [] {
    if (dgrid_sentencepiece_module != nullptr) return Module{dgrid_sentencepiece_module(), ""};
    const PrivateModuleSpec spec = {"DGRID_SPM_MODULE", "libdgrid_spm.so",
#ifdef DGRID_SPM_MODULE_PATH
                                    DGRID_SPM_MODULE_PATH,
#else
                                    nullptr,
#endif
                                    kSentencePieceModuleEntry, "SentencePiece module"};
    const PrivateModule loaded = LoadPrivateModule(spec, [](void* entry) -> const void* {
      using Entry = const SentencePieceModuleApi* (*)();
      const SentencePieceModuleApi* api = reinterpret_cast<Entry>(entry)();
      return api != nullptr && api->version == kSentencePieceModuleVersion ? api : nullptr;
    });
    return Module{static_cast<const SentencePieceModuleApi*>(loaded.api), loaded.error};
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
