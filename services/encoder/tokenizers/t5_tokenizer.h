// T5 tokenizer over a SentencePiece unigram model (spiece.model), reproducing transformers'
// T5TokenizerFast / T5Tokenizer as diffusers' FluxPipeline calls it (tokenizer_2):
//   tokenizer_2(prompt, padding="max_length", max_length=N, truncation=True)
// -> content ids + </s>, content cut to N-1 ids when longer (EOS kept), padded with <pad>.
//
// Ref: transformers models/t5/tokenization_t5.py (5.x: Precompiled normalizer from the model's
// charsmap, applied grapheme by grapheme as HF tokenizers does (precompiled_charsmap.h),
// WhitespaceSplit + Metaspace pre-tokenizer, Unigram, "$A </s>" post-processor, special
// tokens <pad> </s> <unk> and <extra_id_0..99> matched verbatim in the prompt).
//
// Thread safety: Load() builds an immutable object; Encode() is const and may be called from any
// number of threads at once. Errors: see Load() and Encode().
#ifndef DGRID_SERVICES_ENCODER_TOKENIZERS_T5_TOKENIZER_H_
#define DGRID_SERVICES_ENCODER_TOKENIZERS_T5_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "services/encoder/tokenizers/precompiled_charsmap.h"
#include "services/encoder/tokenizers/sentencepiece_model.h"
#include "services/encoder/tokenizers/tokenizer_common.h"

namespace dgrid::encoder {

class T5Tokenizer {
 public:
  // Loads `dir`/spiece.model and, when present, `dir`/tokenizer_config.json and
  // `dir`/special_tokens_map.json (pad/eos/unk tokens, extra_ids, additional_special_tokens,
  // added_tokens_decoder, model_max_length). Errors: NOT_FOUND naming spiece.model when it is
  // missing; INVALID_ARGUMENT when spiece.model or a JSON file cannot be parsed or names tokens the
  // model lacks.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<T5Tokenizer>> Load(const std::string& dir);
  // The same from the files' bytes (spiece.model required: NOT_FOUND otherwise).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<T5Tokenizer>> FromFiles(
      const TokenizerFiles& files);

  ~T5Tokenizer();
  T5Tokenizer(const T5Tokenizer&) = delete;
  T5Tokenizer& operator=(const T5Tokenizer&) = delete;

  // Tokenizes one prompt to exactly `max_length` ids (see TokenizedPrompt). INVALID_ARGUMENT when
  // the prompt is not valid UTF-8 or max_length < 1. Long prompts (100k characters) are encoded in
  // full, then truncated, so `untruncated_num_tokens` is exact.
  [[nodiscard]] absl::StatusOr<TokenizedPrompt> Encode(absl::string_view prompt,
                                                       int max_length) const;

  // Content ids of `prompt` without </s>, truncation or padding.
  [[nodiscard]] absl::StatusOr<std::vector<int32_t>> EncodeContent(absl::string_view prompt) const;

  // Text of `ids`, special tokens skipped (for log messages such as FluxPipeline's truncation
  // warning).
  std::string Decode(absl::Span<const int32_t> ids) const;

  int32_t pad_id() const { return pad_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  // SentencePiece pieces plus the extra ids appended after them.
  int vocab_size() const { return vocab_size_; }
  // tokenizer_config.json's model_max_length, or 0 when not given.
  int model_max_length() const { return model_max_length_; }

 private:
  struct Scratch;  // Buffers reused across the words of one EncodeContent() call.

  T5Tokenizer();
  // Appends the ids of one pre-tokenized word ("▁..."), segmented by the unigram Viterbi.
  void EncodeWord(absl::string_view word, Scratch* scratch, std::vector<int32_t>* ids) const;

  std::unique_ptr<SentencePieceModel> processor_;
  PrecompiledCharsmap charsmap_;  // The model's normalizer_spec.precompiled_charsmap.
  AddedTokenSplitter added_;
  std::unordered_map<std::string, int32_t> piece_ids_;  // Every SentencePiece piece.
  std::vector<double> scores_;                          // By id.
  size_t max_piece_bytes_ = 0;
  double unk_score_ = 0;
  int32_t pad_id_ = 0;
  int32_t eos_id_ = 1;
  int32_t unk_id_ = 2;
  int vocab_size_ = 0;
  int model_max_length_ = 0;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_TOKENIZERS_T5_TOKENIZER_H_
