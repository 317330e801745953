// SentencePiece's precompiled normalization map (NormalizerSpec.precompiled_charsmap of a
// spiece.model) applied the way HF `tokenizers`' Precompiled normalizer applies it, which is what
// transformers' T5TokenizerFast runs (and, in transformers 5, T5Tokenizer too).
//
// Ref: tokenizers/src/normalizers/precompiled.rs and the spm_precompiled crate (0.1.4). The text
// is cut into extended grapheme clusters (grapheme.h). A cluster shorter than 6 bytes is first
// looked up whole: if any key of the map is a prefix of it, the cluster becomes the replacement of
// the *shortest* such key (the rest of the cluster is dropped). Otherwise, and always for clusters
// of 6 bytes or more, each character is replaced by its own entry or kept. Lookups stop at a NUL
// byte. SentencePiece itself instead takes the longest match anywhere in the text, which differs
// for e.g. a combining mark after a space or "❤️" (U+2764 U+FE0F).
//
// The map is a double-array trie over UTF-8 bytes followed by NUL-terminated replacement strings:
// [u32 trie size in bytes][trie units, u32 little-endian][replacements].
//
// Immutable after Parse(); Normalize() may be called from any number of threads at once.
#ifndef DGRID_SERVICES_ENCODER_TOKENIZERS_PRECOMPILED_CHARSMAP_H_
#define DGRID_SERVICES_ENCODER_TOKENIZERS_PRECOMPILED_CHARSMAP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid::encoder {

class PrecompiledCharsmap {
 public:
  // The identity map (a model without precompiled_charsmap: transformers then sets no normalizer).
  PrecompiledCharsmap() = default;

  // Parses the charsmap bytes. INVALID_ARGUMENT when the header or trie size is inconsistent with
  // `blob`'s length, or the replacements are not valid UTF-8.
  [[nodiscard]] static absl::StatusOr<PrecompiledCharsmap> Parse(absl::string_view blob);

  // NormalizerSpec.precompiled_charsmap of a serialized SentencePiece ModelProto; empty when the
  // model has none. INVALID_ARGUMENT when `model` is not well-formed protobuf wire format.
  [[nodiscard]] static absl::StatusOr<std::string> FromModelProto(absl::string_view model);

  bool empty() const { return trie_.empty(); }

  // Appends the normalized form of `text` (valid UTF-8) to `*out`.
  void Normalize(absl::string_view text, std::string* out) const;

 private:
  // The replacement of the shortest key that is a prefix of `key`; false when there is none.
  bool ShortestPrefixMatch(absl::string_view key, absl::string_view* replacement) const;

  std::vector<uint32_t> trie_;
  std::string replacements_;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_TOKENIZERS_PRECOMPILED_CHARSMAP_H_
