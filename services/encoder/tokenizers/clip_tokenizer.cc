#include "services/encoder/tokenizers/clip_tokenizer.h"

#include <queue>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "services/encoder/tokenizers/unicode_text.h"

namespace dgrid::encoder {
namespace {

constexpr char kEndOfWord[] = "</w>";
constexpr char kStartOfText[] = "<|startoftext|>";
constexpr char kEndOfText[] = "<|endoftext|>";

// GPT-2's reversible byte -> printable code point table: printable Latin-1 bytes map to themselves,
// the others to U+0100 onwards in byte order.
std::u32string BytesToUnicode() {
  std::u32string table(256, 0);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

bool StartsWithAscii(const std::u32string& text, size_t pos, absl::string_view literal) {
  if (pos + literal.size() > text.size()) return false;
  for (size_t k = 0; k < literal.size(); ++k) {
    if (text[pos + k] != static_cast<unsigned char>(literal[k])) return false;
  }
  return true;
}

// The CLIP pre-tokenizer regex, alternative by alternative in the regex's order (first match wins
// at each position, as in Oniguruma); characters no alternative takes (whitespace) are dropped.
std::vector<std::u32string> SplitWords(const std::u32string& text) {
  static constexpr absl::string_view kLiterals[] = {kStartOfText, kEndOfText, "'s",  "'t", "'re",
                                                    "'ve",        "'m",       "'ll", "'d"};
  std::vector<std::u32string> words;
  size_t i = 0;
  while (i < text.size()) {
    size_t end = i;
    for (absl::string_view literal : kLiterals) {
      if (StartsWithAscii(text, i, literal)) {
        end = i + literal.size();
        break;
      }
    }
    if (end - i > 4) {
      // A literal <|startoftext|> / <|endoftext|> left in the text (e.g. lower-cased from
      // <|ENDOFTEXT|>): the ByteLevel pre-tokenizer's GPT-2 regex, a no-op on every other piece of
      // this split, cuts it into "<|", the letters and "|>".
      words.emplace_back(text, i, 2);
      words.emplace_back(text, i + 2, end - i - 4);
      words.emplace_back(text, end - 2, 2);
      i = end;
      continue;
    }
    if (end == i) {
      const char32_t c = text[i];
      if (IsLetter(c)) {
        while (end < text.size() && IsLetter(text[end])) ++end;
      } else if (IsNumber(c)) {
        end = i + 1;
      } else if (!IsSpace(c)) {
        while (end < text.size() && !IsSpace(text[end]) && !IsLetter(text[end]) &&
               !IsNumber(text[end]))
          ++end;
      } else {
        ++i;
        continue;
      }
    }
    words.emplace_back(text, i, end - i);
    i = end;
  }
  return words;
}

// NFC, every run of whitespace -> one space, per-character lower-casing (the tokenizers normalizer
// sequence of transformers' CLIPTokenizer).
std::u32string Normalize(const std::u32string& text) {
  const std::u32string nfc = NormalizeNfc(text);
  std::u32string out;
  out.reserve(nfc.size());
  for (size_t i = 0; i < nfc.size(); ++i) {
    if (IsSpace(nfc[i])) {
      while (i + 1 < nfc.size() && IsSpace(nfc[i + 1])) ++i;
      out.push_back(U' ');
    } else {
      AppendLowercase(nfc[i], &out);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClipTokenizer>> ClipTokenizer::Load(const std::string& dir) {
  ASSIGN_OR_RETURN(TokenizerFiles files,
                   ReadTokenizerFiles(dir, {"vocab.json", "merges.txt"},
                                      {"tokenizer_config.json", "special_tokens_map.json"}));
  return FromFiles(files);
}

absl::StatusOr<std::unique_ptr<ClipTokenizer>> ClipTokenizer::FromFiles(
    const TokenizerFiles& files) {
  std::unique_ptr<ClipTokenizer> tok(new ClipTokenizer());
  const std::string& dir = files.dir;
  const std::string vocab_path = files.Path("vocab.json");
  const std::string merges_path = files.Path("merges.txt");
  const std::string* vocab_text = files.Find("vocab.json");
  const std::string* merges_text = files.Find("merges.txt");
  if (vocab_text == nullptr) return NotFound("tokenizer file ", vocab_path, " is missing");
  if (merges_text == nullptr) return NotFound("tokenizer file ", merges_path, " is missing");
  ASSIGN_OR_RETURN(nlohmann::json vocab, ParseJsonFile(*vocab_text, vocab_path));
  if (!vocab.is_object() || vocab.empty()) {
    return InvalidArgument("tokenizer file ", vocab_path, " is not a non-empty JSON object");
  }
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > (1 << 24)) {
      return InvalidArgument("tokenizer file ", vocab_path, ": token '", it.key(),
                             "' has no valid id");
    }
    const int32_t id = it->get<int32_t>();
    tok->vocab_[it.key()] = id;
    if (id >= static_cast<int32_t>(tok->id_to_token_.size())) tok->id_to_token_.resize(id + 1);
    tok->id_to_token_[id] = it.key();
  }

  int rank = 0, line_no = 0;
  for (absl::string_view line : absl::StrSplit(*merges_text, '\n')) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || absl::StartsWith(line, "#version")) continue;
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
      return InvalidArgument("tokenizer file ", merges_path, ": line ", line_no,
                             " is not 'left right'");
    }
    const std::string merged = absl::StrCat(parts[0], parts[1]);
    const int32_t a = tok->TokenId(std::string(parts[0]));
    const int32_t b = tok->TokenId(std::string(parts[1]));
    const int32_t m = tok->TokenId(merged);
    if (a < 0 || b < 0 || m < 0) {
      return InvalidArgument("tokenizer file ", merges_path, ": line ", line_no,
                             " merges tokens not in ", vocab_path);
    }
    tok->merges_[PairKey(a, b)] = Merge{rank++, m};
  }

  ASSIGN_OR_RETURN(nlohmann::json config, MergedTokenizerConfig(files));
  struct Special {
    const char* key;
    const char* fallback;
    int32_t* id;
  };
  for (const Special& s : {Special{"bos_token", kStartOfText, &tok->bos_id_},
                           Special{"eos_token", kEndOfText, &tok->eos_id_},
                           Special{"pad_token", kEndOfText, &tok->pad_id_},
                           Special{"unk_token", kEndOfText, &tok->unk_id_}}) {
    std::string content = SpecialTokenContent(config, s.key);
    if (content.empty()) content = s.fallback;
    *s.id = tok->TokenId(content);
    if (*s.id < 0)
      return InvalidArgument("tokenizer in ", dir, ": ", s.key, " '", content,
                             "' is not in vocab.json");
    tok->added_.Add(content, *s.id);
  }
  if (auto it = config.find("model_max_length"); it != config.end() && it->is_number_integer() &&
                                                 it->get<int64_t>() > 0 &&
                                                 it->get<int64_t>() < (1 << 20)) {
    tok->model_max_length_ = it->get<int>();
  }

  tok->byte_to_unicode_ = BytesToUnicode();
  for (int b = 0; b < 256; ++b)
    tok->unicode_to_byte_[tok->byte_to_unicode_[b]] = static_cast<uint8_t>(b);
  return tok;
}

int32_t ClipTokenizer::TokenId(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

void ClipTokenizer::EncodeWord(const std::u32string& word, std::vector<int32_t>* ids) const {
  // Doubly linked symbols merged lowest rank first (leftmost on ties), as HF tokenizers' BPE does;
  // stale queue entries are recognised by the pair no longer merging into the same id.
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    std::string token;
    AppendUtf8(word[i], &token);
    if (i + 1 == word.size()) token += kEndOfWord;
    int32_t id = TokenId(token);
    if (id < 0)
      id = unk_id_;  // No fusing of unknowns: transformers builds CLIP's BPE with fuse_unk=False.
    if (id < 0) continue;
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, index + 1, true});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  using Entry = std::pair<std::pair<int, int>, int32_t>;  // ((rank, pos), new_id)
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> queue;
  auto push_pair = [&](int pos) {
    if (pos < 0 || symbols[pos].next < 0) return;
    auto it = merges_.find(PairKey(symbols[pos].id, symbols[symbols[pos].next].id));
    if (it != merges_.end()) queue.push({{it->second.rank, pos}, it->second.new_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push_pair(i);
  while (!queue.empty()) {
    const auto [key, new_id] = queue.top();
    queue.pop();
    const int pos = key.second;
    Symbol& left = symbols[pos];
    if (!left.alive || left.next < 0) continue;
    auto it = merges_.find(PairKey(left.id, symbols[left.next].id));
    if (it == merges_.end() || it->second.new_id != new_id) continue;
    Symbol& right = symbols[left.next];
    right.alive = false;
    left.id = new_id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = pos;
    push_pair(left.prev);
    push_pair(pos);
  }
  for (int i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
}

absl::StatusOr<std::vector<int32_t>> ClipTokenizer::EncodeContent(absl::string_view prompt) const {
  RETURN_IF_ERROR(DecodeUtf8(prompt).status());
  std::vector<int32_t> ids;
  for (const AddedTokenSplitter::Piece& piece : added_.Split(prompt)) {
    if (piece.is_token) {
      ids.push_back(piece.id);
      continue;
    }
    ASSIGN_OR_RETURN(std::u32string cps, DecodeUtf8(piece.text));
    for (const std::u32string& word : SplitWords(Normalize(cps))) {
      std::u32string mapped;
      for (unsigned char byte : EncodeUtf8(word)) mapped.push_back(byte_to_unicode_[byte]);
      EncodeWord(mapped, &ids);
    }
  }
  return ids;
}

absl::StatusOr<TokenizedPrompt> ClipTokenizer::Encode(absl::string_view prompt,
                                                      int max_length) const {
  if (max_length < 2) return InvalidArgument("CLIP max_length must be >= 2, got ", max_length);
  ASSIGN_OR_RETURN(std::vector<int32_t> content, EncodeContent(prompt));
  return TruncateAndPad(content, {bos_id_}, {eos_id_}, max_length, pad_id_);
}

std::string ClipTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string mapped;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || id == bos_id_ || id == eos_id_ || id == pad_id_) continue;
    mapped += id_to_token_[id];
  }
  std::string bytes;
  for (absl::string_view rest = mapped; !rest.empty();) {
    if (absl::StartsWith(rest, kEndOfWord)) {
      bytes.push_back(' ');
      rest.remove_prefix(sizeof(kEndOfWord) - 1);
      continue;
    }
    size_t pos = 0;
    const char32_t cp = NextCodepoint(rest, &pos);
    auto it = unicode_to_byte_.find(cp);
    if (it != unicode_to_byte_.end()) bytes.push_back(static_cast<char>(it->second));
    rest.remove_prefix(pos);
  }
  while (!bytes.empty() && bytes.back() == ' ') bytes.pop_back();
  return bytes;
}

}  // namespace dgrid::encoder
