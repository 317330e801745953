#include "services/encoder/tokenizers/precompiled_charsmap.h"

#include <cstring>

#include "common/status.h"
#include "services/encoder/tokenizers/grapheme.h"
#include "services/encoder/tokenizers/unicode_text.h"

namespace dgrid::encoder {
namespace {

// Clusters this long or longer are never looked up whole (HF's `grapheme.len() < 6`).
constexpr size_t kMaxWholeClusterBytes = 5;

// Double-array trie units, as SentencePiece's Darts-clone writes them.
bool HasLeaf(uint32_t unit) { return (unit >> 8) & 1; }
uint32_t Value(uint32_t unit) { return unit & ((1u << 31) - 1); }
uint32_t Label(uint32_t unit) { return unit & ((1u << 31) | 0xFF); }
uint32_t Offset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }

size_t Utf8Length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  return 4;
}

// Protobuf wire format, just enough to pull one length-delimited field out of a message.
bool ReadVarint(absl::string_view data, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && *pos < data.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(data[(*pos)++]);
    *value |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// The last occurrence of length-delimited field `field` of `message` (empty when absent; `found`
// says whether it occurred). False when the wire format is broken.
bool FindBytesField(absl::string_view message, uint32_t field, absl::string_view* value,
                    bool* found) {
  *found = false;
  size_t pos = 0;
  while (pos < message.size()) {
    uint64_t tag = 0, length = 0;
    if (!ReadVarint(message, &pos, &tag)) return false;
    switch (tag & 7) {
      case 0:  // varint
        if (!ReadVarint(message, &pos, &length)) return false;
        continue;
      case 1:  // fixed64
        length = 8;
        break;
      case 5:  // fixed32
        length = 4;
        break;
      case 2:  // length-delimited
        if (!ReadVarint(message, &pos, &length)) return false;
        break;
      default:  // groups are not used by sentencepiece_model.proto
        return false;
    }
    if (length > message.size() - pos) return false;
    if ((tag & 7) == 2 && (tag >> 3) == field) {
      *value = message.substr(pos, length);
      *found = true;
    }
    pos += length;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::string> PrecompiledCharsmap::FromModelProto(absl::string_view model) {
  constexpr uint32_t kNormalizerSpecField = 3;  // ModelProto.normalizer_spec
  constexpr uint32_t kPrecompiledCharsmap = 2;  // NormalizerSpec.precompiled_charsmap
  absl::string_view spec, charsmap;
  bool found = false;
  if (!FindBytesField(model, kNormalizerSpecField, &spec, &found)) {
    return InvalidArgument("SentencePiece model is not a valid ModelProto");
  }
  if (!found) return std::string();
  if (!FindBytesField(spec, kPrecompiledCharsmap, &charsmap, &found)) {
    return InvalidArgument("SentencePiece model has a malformed normalizer_spec");
  }
  return std::string(charsmap);
}

absl::StatusOr<PrecompiledCharsmap> PrecompiledCharsmap::Parse(absl::string_view blob) {
  PrecompiledCharsmap map;
  if (blob.empty()) return map;
  if (blob.size() < 4) return InvalidArgument("precompiled_charsmap is shorter than its header");
  const auto* bytes = reinterpret_cast<const unsigned char*>(blob.data());
  const uint32_t trie_bytes =
      bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (static_cast<uint32_t>(bytes[3]) << 24);
  if (trie_bytes % 4 != 0 || trie_bytes == 0 || trie_bytes > blob.size() - 4) {
    return InvalidArgument("precompiled_charsmap: trie size ", trie_bytes, " does not fit its ",
                           blob.size(), " bytes");
  }
  map.trie_.resize(trie_bytes / 4);
  for (size_t i = 0; i < map.trie_.size(); ++i) {
    const unsigned char* u = bytes + 4 + 4 * i;
    map.trie_[i] = u[0] | (u[1] << 8) | (u[2] << 16) | (static_cast<uint32_t>(u[3]) << 24);
  }
  map.replacements_ = std::string(blob.substr(4 + trie_bytes));
  if (absl::Status s = DecodeUtf8(map.replacements_).status(); !s.ok()) {
    return InvalidArgument("precompiled_charsmap: replacements are not valid UTF-8");
  }
  return map;
}

bool PrecompiledCharsmap::ShortestPrefixMatch(absl::string_view key,
                                              absl::string_view* replacement) const {
  if (trie_.empty()) return false;
  size_t node = Offset(trie_[0]);
  for (const char ch : key) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == 0) return false;
    node ^= c;
    if (node >= trie_.size()) return false;
    const uint32_t unit = trie_[node];
    if (Label(unit) != c) return false;
    node ^= Offset(unit);
    if (node >= trie_.size()) return false;
    if (HasLeaf(unit)) {
      const size_t begin = Value(trie_[node]);
      if (begin > replacements_.size()) return false;
      const size_t end = replacements_.find('\0', begin);
      *replacement =
          absl::string_view(replacements_)
              .substr(begin, (end == std::string::npos ? replacements_.size() : end) - begin);
      return true;
    }
  }
  return false;
}

void PrecompiledCharsmap::Normalize(absl::string_view text, std::string* out) const {
  if (trie_.empty()) {
    out->append(text.data(), text.size());
    return;
  }
  absl::string_view replacement;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = GraphemeEnd(text, pos);
    const size_t first_char = Utf8Length(static_cast<unsigned char>(text[pos]));
    if (end - pos > first_char && end - pos <= kMaxWholeClusterBytes &&
        ShortestPrefixMatch(text.substr(pos, end - pos), &replacement)) {
      out->append(replacement.data(), replacement.size());
      pos = end;
      continue;
    }
    while (pos < end) {
      const size_t len = Utf8Length(static_cast<unsigned char>(text[pos]));
      const absl::string_view ch = text.substr(pos, len);
      if (ShortestPrefixMatch(ch, &replacement)) {
        out->append(replacement.data(), replacement.size());
      } else {
        out->append(ch.data(), ch.size());
      }
      pos += len;
    }
  }
}

}  // namespace dgrid::encoder
