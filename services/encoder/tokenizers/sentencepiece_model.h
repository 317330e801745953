// A thin wrapper over sentencepiece::SentencePieceProcessor.
//
// Why it exists: Debian's <sentencepiece_processor.h> (0.1.97) declares `namespace absl { using
// std::string_view; }`, which clashes with the real Abseil's absl::string_view. This header uses
// only standard types and its .cc includes no Abseil header, so the rest of dgrid never sees the
// clash.
//
// Immutable after Load(); the const methods may be called from any number of threads at once.
// Errors are returned as (ok, message) pairs and turned into absl::Status by the caller.
#ifndef DGRID_SERVICES_ENCODER_TOKENIZERS_SENTENCEPIECE_MODEL_H_
#define DGRID_SERVICES_ENCODER_TOKENIZERS_SENTENCEPIECE_MODEL_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dgrid::encoder {

class SentencePieceModel {
 public:
  SentencePieceModel();
  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  // Parses a serialized ModelProto (the bytes of spiece.model). False with `*error` set on failure.
  bool LoadFromSerialized(const std::string& serialized, std::string* error);

  // Ids of `text` (normalized and segmented by the model). False with `*error` set on failure.
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const;
  // The pieces of `text` as strings; for unknown characters the piece is their normalized text, so
  // the concatenation is the model's normalized form of `text` (spaces as U+2581).
  bool EncodeAsPieces(std::string_view text, std::vector<std::string>* pieces,
                      std::string* error) const;
  std::string Decode(const std::vector<int>& ids) const;
  float GetScore(int id) const;

  int PieceToId(const std::string& piece) const;  // unk_id() when absent.
  std::string IdToPiece(int id) const;
  bool IsControl(int id) const;
  int GetPieceSize() const;
  int unk_id() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_TOKENIZERS_SENTENCEPIECE_MODEL_H_
