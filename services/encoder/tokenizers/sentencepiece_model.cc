// Must not include any Abseil header (see sentencepiece_model.h).
#include "services/encoder/tokenizers/sentencepiece_model.h"

#include <sentencepiece_processor.h>

namespace dgrid::encoder {

struct SentencePieceModel::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

SentencePieceModel::SentencePieceModel() : impl_(std::make_unique<Impl>()) {}
SentencePieceModel::~SentencePieceModel() = default;

bool SentencePieceModel::LoadFromSerialized(const std::string& serialized, std::string* error) {
  const auto status = impl_->processor.LoadFromSerializedProto(serialized);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

bool SentencePieceModel::Encode(std::string_view text, std::vector<int>* ids,
                                std::string* error) const {
  const auto status = impl_->processor.Encode(text, ids);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

bool SentencePieceModel::EncodeAsPieces(std::string_view text, std::vector<std::string>* pieces,
                                        std::string* error) const {
  const auto status = impl_->processor.Encode(text, pieces);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

float SentencePieceModel::GetScore(int id) const { return impl_->processor.GetScore(id); }

std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  return impl_->processor.DecodeIds(ids);
}

int SentencePieceModel::PieceToId(const std::string& piece) const {
  return impl_->processor.PieceToId(piece);
}
std::string SentencePieceModel::IdToPiece(int id) const { return impl_->processor.IdToPiece(id); }
bool SentencePieceModel::IsControl(int id) const { return impl_->processor.IsControl(id); }
int SentencePieceModel::GetPieceSize() const { return impl_->processor.GetPieceSize(); }
int SentencePieceModel::unk_id() const { return impl_->processor.unk_id(); }

}  // namespace dgrid::encoder
