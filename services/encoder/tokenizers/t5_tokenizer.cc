#include "services/encoder/tokenizers/t5_tokenizer.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "common/status.h"
#include "services/encoder/tokenizers/unicode_text.h"

namespace dgrid::encoder {
namespace {

constexpr int kDefaultExtraIds = 100;

}  // namespace

T5Tokenizer::T5Tokenizer() : processor_(std::make_unique<SentencePieceModel>()) {}
T5Tokenizer::~T5Tokenizer() = default;

absl::StatusOr<std::unique_ptr<T5Tokenizer>> T5Tokenizer::Load(const std::string& dir) {
  ASSIGN_OR_RETURN(TokenizerFiles files,
                   ReadTokenizerFiles(dir, {"spiece.model"},
                                      {"tokenizer_config.json", "special_tokens_map.json"}));
  return FromFiles(files);
}

absl::StatusOr<std::unique_ptr<T5Tokenizer>> T5Tokenizer::FromFiles(const TokenizerFiles& files) {
  const std::string& dir = files.dir;
  const std::string model_path = files.Path("spiece.model");
  const std::string* model = files.Find("spiece.model");
  if (model == nullptr) return NotFound("tokenizer file ", model_path, " is missing");
  const std::string& serialized = *model;
  std::unique_ptr<T5Tokenizer> tok(new T5Tokenizer());
  std::string error;
  if (!tok->processor_->LoadFromSerialized(serialized, &error)) {
    return InvalidArgument("tokenizer file ", model_path,
                           " is not a valid SentencePiece model: ", error);
  }
  {
    absl::StatusOr<std::string> charsmap = PrecompiledCharsmap::FromModelProto(serialized);
    absl::StatusOr<PrecompiledCharsmap> parsed =
        charsmap.ok() ? PrecompiledCharsmap::Parse(*charsmap) : charsmap.status();
    if (!parsed.ok()) {
      return InvalidArgument("tokenizer file ", model_path, ": ", parsed.status().message());
    }
    tok->charsmap_ = *std::move(parsed);
  }
  const int sp_size = tok->processor_->GetPieceSize();
  double min_score = 0;
  tok->scores_.resize(sp_size);
  for (int id = 0; id < sp_size; ++id) {
    const std::string piece = tok->processor_->IdToPiece(id);
    tok->piece_ids_.emplace(piece, id);
    tok->max_piece_bytes_ = std::max(tok->max_piece_bytes_, piece.size());
    tok->scores_[id] = tok->processor_->GetScore(id);
    min_score = std::min(min_score, tok->scores_[id]);
  }
  constexpr double kUnkPenalty = 10.0;  // As SentencePiece and HF tokenizers' Unigram.
  tok->unk_score_ = min_score - kUnkPenalty;
  ASSIGN_OR_RETURN(nlohmann::json config, MergedTokenizerConfig(files));

  // Ids given explicitly by added_tokens_decoder ({"32099": {"content": "<extra_id_0>", ...}}) win.
  std::vector<std::pair<std::string, int32_t>> explicit_ids;
  if (auto it = config.find("added_tokens_decoder"); it != config.end() && it->is_object()) {
    for (auto entry = it->begin(); entry != it->end(); ++entry) {
      const std::string content = SpecialTokenContent(nlohmann::json{{"t", entry.value()}}, "t");
      char* end = nullptr;
      const long id = std::strtol(entry.key().c_str(), &end, 10);
      if (content.empty() || *end != '\0' || id < 0) {
        return InvalidArgument("tokenizer_config.json in ", dir,
                               ": bad added_tokens_decoder entry ", entry.key());
      }
      explicit_ids.emplace_back(content, static_cast<int32_t>(id));
    }
  }
  auto explicit_id = [&](const std::string& content) -> int32_t {
    for (const auto& [text, id] : explicit_ids) {
      if (text == content) return id;
    }
    return -1;
  };

  int extra_ids = kDefaultExtraIds;
  if (auto it = config.find("extra_ids"); it != config.end()) {
    if (!it->is_number_integer() || it->get<int>() < 0) {
      return InvalidArgument("tokenizer_config.json in ", dir,
                             ": extra_ids must be a non-negative integer");
    }
    extra_ids = it->get<int>();
  }
  if (auto it = config.find("model_max_length"); it != config.end() && it->is_number_integer()) {
    tok->model_max_length_ = it->get<int>();
  }

  // T5's layout: the SentencePiece pieces, then <extra_id_{n-1}> ... <extra_id_0> after them.
  int next_id = sp_size + extra_ids;
  auto resolve = [&](const std::string& content) -> int32_t {
    if (int32_t id = explicit_id(content); id >= 0) return id;
    const int sp_id = tok->processor_->PieceToId(content);
    if (sp_id != tok->processor_->unk_id() || content == tok->processor_->IdToPiece(sp_id))
      return sp_id;
    if (content.rfind("<extra_id_", 0) == 0 && content.back() == '>') {
      char* end = nullptr;
      const long n = std::strtol(content.c_str() + 10, &end, 10);
      if (*end == '>' && n >= 0 && n < extra_ids)
        return sp_size + extra_ids - 1 - static_cast<int32_t>(n);
    }
    return next_id++;  // Any other added token goes after the vocabulary, in order.
  };

  struct Special {
    const char* key;
    const char* fallback;
    int32_t* id;
  };
  for (const Special& s :
       {Special{"pad_token", "<pad>", &tok->pad_id_}, Special{"eos_token", "</s>", &tok->eos_id_},
        Special{"unk_token", "<unk>", &tok->unk_id_}}) {
    std::string content = SpecialTokenContent(config, s.key);
    if (content.empty()) content = s.fallback;
    const int32_t id = resolve(content);
    if (id >= sp_size + extra_ids) {
      return InvalidArgument("tokenizer in ", dir, ": ", s.key, " '", content,
                             "' is not in spiece.model");
    }
    *s.id = id;
    tok->added_.Add(content, id);
  }
  for (int i = 0; i < extra_ids; ++i) {
    const std::string content = absl::StrCat("<extra_id_", i, ">");
    tok->added_.Add(content, resolve(content));
  }
  if (auto it = config.find("additional_special_tokens"); it != config.end() && it->is_array()) {
    for (const auto& entry : *it) {
      const std::string content = SpecialTokenContent(nlohmann::json{{"t", entry}}, "t");
      if (!content.empty()) tok->added_.Add(content, resolve(content));
    }
  }
  for (const auto& [content, id] : explicit_ids) tok->added_.Add(content, id);
  tok->vocab_size_ = next_id;
  return tok;
}

struct T5Tokenizer::Scratch {
  struct Best {
    double score = 0;
    int start = -1;
    int32_t id = -1;
  };
  std::string normalized;
  std::string word;
  std::string candidate;
  std::vector<Best> best;
  std::vector<int32_t> reversed;
};

void T5Tokenizer::EncodeWord(absl::string_view word, Scratch* scratch,
                             std::vector<int32_t>* ids) const {
  // Viterbi over character boundaries, as HF tokenizers' Unigram::encode_optimized: a node keeps
  // the first candidate among equal scores (strict '>'), candidates come by start position then
  // length; a character no piece covers becomes an unknown node, and runs of unknown nodes fuse
  // into one <unk>. (SentencePiece's own Viterbi breaks ties differently.)
  using Best = Scratch::Best;
  const int n = static_cast<int>(word.size());
  std::vector<Best>& best = scratch->best;
  best.assign(n + 1, Best{});
  best[0].start = 0;
  std::string& candidate_piece = scratch->candidate;
  for (int start = 0; start < n;) {
    size_t next = start;
    NextCodepoint(word, &next);
    const int char_len = static_cast<int>(next) - start;
    const double base = best[start].score;
    bool has_single_char = false;
    for (size_t len = 1; len <= max_piece_bytes_ && start + len <= static_cast<size_t>(n); ++len) {
      candidate_piece.assign(word.data() + start, len);
      auto it = piece_ids_.find(candidate_piece);
      if (it == piece_ids_.end()) continue;
      Best& target = best[start + len];
      const double candidate = base + scores_[it->second];
      if (target.start < 0 || candidate > target.score) target = {candidate, start, it->second};
      if (static_cast<int>(len) == char_len) has_single_char = true;
    }
    if (!has_single_char) {
      Best& target = best[start + char_len];
      const double candidate = base + unk_score_;
      if (target.start < 0 || candidate > target.score) target = {candidate, start, unk_id_};
    }
    start += char_len;
  }
  std::vector<int32_t>& reversed = scratch->reversed;
  reversed.clear();
  for (int end = n; end > 0; end = best[end].start) {
    const int32_t id = best[end].id;
    if (id == unk_id_ && !reversed.empty() && reversed.back() == unk_id_) continue;  // fuse_unk
    reversed.push_back(id);
  }
  ids->insert(ids->end(), reversed.rbegin(), reversed.rend());
}

absl::StatusOr<std::vector<int32_t>> T5Tokenizer::EncodeContent(absl::string_view prompt) const {
  RETURN_IF_ERROR(DecodeUtf8(prompt).status());
  std::vector<int32_t> ids;
  Scratch scratch;
  static constexpr absl::string_view kMeta = "\xe2\x96\x81";  // U+2581, SentencePiece's space.
  for (const AddedTokenSplitter::Piece& piece : added_.Split(prompt)) {
    if (piece.is_token) {
      ids.push_back(piece.id);
      continue;
    }
    // transformers: the model's charsmap normalizer (grapheme by grapheme, see
    // precompiled_charsmap.h), WhitespaceSplit, then Metaspace (a U+2581 put in front of each
    // word that lacks one, and a split before every U+2581).
    std::string& normalized = scratch.normalized;
    normalized.clear();
    charsmap_.Normalize(piece.text, &normalized);
    std::string& word = scratch.word;
    word.clear();
    auto flush = [&] {
      if (!word.empty()) EncodeWord(word, &scratch, &ids);
      word.clear();
    };
    for (size_t pos = 0; pos < normalized.size();) {
      const size_t at = pos;
      const char32_t cp = NextCodepoint(normalized, &pos);
      if (IsSpace(cp)) {
        flush();
      } else if (cp == 0x2581) {
        flush();
        word.assign(kMeta.data(), kMeta.size());
      } else {
        if (word.empty()) word.assign(kMeta.data(), kMeta.size());
        word.append(normalized, at, pos - at);
      }
    }
    flush();
  }
  return ids;
}

absl::StatusOr<TokenizedPrompt> T5Tokenizer::Encode(absl::string_view prompt,
                                                    int max_length) const {
  if (max_length < 1) return InvalidArgument("T5 max_length must be >= 1, got ", max_length);
  ASSIGN_OR_RETURN(std::vector<int32_t> content, EncodeContent(prompt));
  return TruncateAndPad(content, {}, {eos_id_}, max_length, pad_id_);
}

std::string T5Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::vector<int> pieces;
  const int sp_size = processor_->GetPieceSize();
  for (int32_t id : ids) {
    if (id >= 0 && id < sp_size && !processor_->IsControl(id)) pieces.push_back(id);
  }
  return processor_->Decode(pieces);
}

}  // namespace dgrid::encoder
