// libdgrid_spm.so: SentencePiece behind a function table (see
// services/encoder/tokenizers/sentencepiece_module_api.h for why it is a separate module).
// Must not include any Abseil header: Debian's sentencepiece_processor.h declares its own
// `absl::string_view`.
#include <sentencepiece_processor.h>

#include <exception>

#include "services/encoder/tokenizers/sentencepiece_module_api.h"

namespace dgrid::encoder {
namespace {

using Processor = sentencepiece::SentencePieceProcessor;

const Processor& P(const void* model) { return *static_cast<const Processor*>(model); }

template <typename Status>
bool Report(const Status& status, std::string* error) {
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

const SentencePieceModuleApi kApi = {
    kSentencePieceModuleVersion,
    []() -> void* { return new Processor(); },
    [](void* model) { delete static_cast<Processor*>(model); },
    [](void* model, const std::string& serialized, std::string* error) {
      // A malformed model can make SentencePiece throw instead of returning a status (its trie
      // builder, darts-clone, throws on an empty piece): that is an invalid file too.
      try {
        return Report(static_cast<Processor*>(model)->LoadFromSerializedProto(serialized), error);
      } catch (const std::exception& e) {
        *error = e.what();
        return false;
      }
    },
    [](const void* model, std::string_view text, std::vector<int>* ids, std::string* error) {
      return Report(P(model).Encode(text, ids), error);
    },
    [](const void* model, std::string_view text, std::vector<std::string>* pieces,
       std::string* error) { return Report(P(model).Encode(text, pieces), error); },
    [](const void* model, const std::vector<int>& ids) { return P(model).DecodeIds(ids); },
    [](const void* model, int id) { return P(model).GetScore(id); },
    [](const void* model, const std::string& piece) { return P(model).PieceToId(piece); },
    [](const void* model, int id) { return P(model).IdToPiece(id); },
    [](const void* model, int id) { return P(model).IsControl(id); },
    [](const void* model) { return P(model).GetPieceSize(); },
    [](const void* model) { return P(model).unk_id(); },
};

}  // namespace
}  // namespace dgrid::encoder

extern "C" __attribute__((visibility("default"))) const dgrid::encoder::SentencePieceModuleApi*
dgrid_sentencepiece_module() {
  return &dgrid::encoder::kApi;
}
