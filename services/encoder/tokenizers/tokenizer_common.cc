#include "services/encoder/tokenizers/tokenizer_common.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>

#include "common/status.h"

namespace dgrid::encoder {

void AddedTokenSplitter::Add(const std::string& content, int32_t id) {
  if (content.empty()) return;
  for (auto& [text, existing] : tokens_) {
    if (text == content) {
      existing = id;
      return;
    }
  }
  tokens_.emplace_back(content, id);
  std::stable_sort(tokens_.begin(), tokens_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

std::vector<AddedTokenSplitter::Piece> AddedTokenSplitter::Split(absl::string_view text) const {
  std::vector<Piece> pieces;
  size_t plain_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    const std::pair<std::string, int32_t>* match = nullptr;
    for (const auto& token : tokens_) {  // Longest first, so the first hit is the longest.
      if (text.compare(i, token.first.size(), token.first) == 0) {
        match = &token;
        break;
      }
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    if (i > plain_start) pieces.push_back({false, 0, text.substr(plain_start, i - plain_start)});
    pieces.push_back({true, match->second, text.substr(i, match->first.size())});
    i += match->first.size();
    plain_start = i;
  }
  if (plain_start < text.size()) pieces.push_back({false, 0, text.substr(plain_start)});
  return pieces;
}

TokenizedPrompt TruncateAndPad(const std::vector<int32_t>& content,
                               const std::vector<int32_t>& prefix,
                               const std::vector<int32_t>& suffix, int max_length, int32_t pad_id) {
  TokenizedPrompt out;
  const int specials = static_cast<int>(prefix.size() + suffix.size());
  const int room = std::max(0, max_length - specials);
  const int kept = std::min<int>(room, content.size());
  out.untruncated_num_tokens = static_cast<int>(content.size()) + specials;
  out.truncated = kept < static_cast<int>(content.size());
  out.removed_ids.assign(content.begin() + kept, content.end());
  out.input_ids.reserve(std::max(max_length, kept + specials));
  out.input_ids.insert(out.input_ids.end(), prefix.begin(), prefix.end());
  out.input_ids.insert(out.input_ids.end(), content.begin(), content.begin() + kept);
  out.input_ids.insert(out.input_ids.end(), suffix.begin(), suffix.end());
  out.num_tokens = static_cast<int>(out.input_ids.size());
  if (static_cast<int>(out.input_ids.size()) < max_length) out.input_ids.resize(max_length, pad_id);
  return out;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    return ErrnoStatus(errno, absl::StrCat("tokenizer file ", path));
  if (!S_ISREG(st.st_mode))
    return InvalidArgument("tokenizer file ", path, " is not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus(errno, absl::StrCat("cannot open tokenizer file ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return DataLoss("error reading tokenizer file ", path);
  return buffer.str();
}

absl::StatusOr<nlohmann::json> ParseJsonFile(absl::string_view text, const std::string& path) {
  nlohmann::json parsed =
      nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return InvalidArgument("tokenizer file ", path, " is not valid JSON");
  return parsed;
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseJsonFile(text, path);
}

const std::string* TokenizerFiles::Find(absl::string_view name) const {
  auto it = files.find(std::string(name));
  return it == files.end() ? nullptr : &it->second;
}

absl::StatusOr<TokenizerFiles> ReadTokenizerFiles(const std::string& dir,
                                                  const std::vector<std::string>& required,
                                                  const std::vector<std::string>& optional) {
  TokenizerFiles out;
  out.dir = dir;
  for (const std::string& name : required) {
    ASSIGN_OR_RETURN(out.files[name], ReadFileToString(out.Path(name)));
  }
  for (const std::string& name : optional) {
    if (FileExists(out.Path(name))) {
      ASSIGN_OR_RETURN(out.files[name], ReadFileToString(out.Path(name)));
    }
  }
  return out;
}

absl::StatusOr<nlohmann::json> MergedTokenizerConfig(const TokenizerFiles& files) {
  nlohmann::json config = nlohmann::json::object();
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const std::string* text = files.Find(name);
    if (text == nullptr) continue;
    const std::string path = files.Path(name);
    ASSIGN_OR_RETURN(nlohmann::json part, ParseJsonFile(*text, path));
    if (!part.is_object()) return InvalidArgument("tokenizer file ", path, " is not a JSON object");
    for (auto it = part.begin(); it != part.end(); ++it) {
      if (!config.contains(it.key())) config[it.key()] = it.value();
    }
  }
  return config;
}

std::string SpecialTokenContent(const nlohmann::json& config, const char* key) {
  if (!config.is_object()) return "";
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return "";
}

}  // namespace dgrid::encoder
