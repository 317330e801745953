// CLIP tokenizer: byte-level BPE over vocab.json + merges.txt with "</w>" marking the end of a
// word, reproducing transformers' CLIPTokenizer / CLIPTokenizerFast as diffusers' FluxPipeline
// calls it:
//   tokenizer(prompt, padding="max_length", max_length=77, truncation=True)
// -> <|startoftext|> content <|endoftext|>, content cut to max_length-2 ids (EOS kept), padded with
// the config's pad token (<|endoftext|> for FLUX).
//
// Ref: transformers models/clip/tokenization_clip.py (5.x, one class behind both names, backed by
// HF tokenizers): NFC, \s+ -> " ", lower-case; split on the CLIP regex
// <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// (whitespace dropped); GPT-2 bytes_to_unicode; BPE by merge rank; RobertaProcessing adds BOS/EOS.
// transformers 4.x's slow Python CLIPTokenizer cleaned text differently without ftfy
// (BasicTokenizer: control characters dropped, CJK characters split one by one); transformers 5 no
// longer has it.
//
// Thread safety: Load() builds an immutable object; Encode() is const and may run concurrently.
#ifndef DGRID_SERVICES_ENCODER_TOKENIZERS_CLIP_TOKENIZER_H_
#define DGRID_SERVICES_ENCODER_TOKENIZERS_CLIP_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "services/encoder/tokenizers/tokenizer_common.h"

namespace dgrid::encoder {

class ClipTokenizer {
 public:
  static constexpr int kDefaultMaxLength = 77;

  // Loads `dir`/vocab.json, `dir`/merges.txt and, when present, `dir`/tokenizer_config.json and
  // `dir`/special_tokens_map.json (bos/eos/pad/unk tokens, model_max_length). Errors: NOT_FOUND
  // naming the missing file; INVALID_ARGUMENT for malformed JSON, a malformed merges line or a
  // merge/special token that is not in the vocabulary.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ClipTokenizer>> Load(const std::string& dir);
  // The same from the files' bytes (vocab.json and merges.txt required: NOT_FOUND otherwise).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ClipTokenizer>> FromFiles(
      const TokenizerFiles& files);

  // Tokenizes one prompt to exactly `max_length` ids (see TokenizedPrompt). INVALID_ARGUMENT when
  // the prompt is not valid UTF-8 or max_length < 2.
  [[nodiscard]] absl::StatusOr<TokenizedPrompt> Encode(absl::string_view prompt,
                                                       int max_length) const;

  // Content ids of `prompt` without BOS/EOS, truncation or padding.
  [[nodiscard]] absl::StatusOr<std::vector<int32_t>> EncodeContent(absl::string_view prompt) const;

  // Text of `ids` with special tokens skipped; "</w>" becomes a space (as transformers decodes).
  std::string Decode(absl::Span<const int32_t> ids) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t pad_id() const { return pad_id_; }
  int32_t unk_id() const { return unk_id_; }
  int vocab_size() const { return static_cast<int>(id_to_token_.size()); }
  // tokenizer_config.json's model_max_length, or kDefaultMaxLength.
  int model_max_length() const { return model_max_length_; }

 private:
  ClipTokenizer() = default;

  struct Merge {
    int rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // Appends the BPE ids of one pre-tokenized word (already byte-level mapped) to `ids`.
  void EncodeWord(const std::u32string& word, std::vector<int32_t>* ids) const;
  int32_t TokenId(const std::string& token) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::u32string byte_to_unicode_;  // 256 entries.
  std::unordered_map<char32_t, uint8_t> unicode_to_byte_;
  AddedTokenSplitter added_;
  int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1, unk_id_ = -1;
  int model_max_length_ = kDefaultMaxLength;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_TOKENIZERS_CLIP_TOKENIZER_H_
