// Pieces shared by the dgrid tokenizers (T5Tokenizer, ClipTokenizer): the result type, the
// splitting of a prompt on special ("added") tokens, the truncate-and-pad step, and file loading
// with the error codes every tokenizer uses (missing file: NOT_FOUND naming the path; unreadable or
// malformed: INVALID_ARGUMENT / DATA_LOSS naming the path).
#ifndef DGRID_SERVICES_ENCODER_TOKENIZERS_TOKENIZER_COMMON_H_
#define DGRID_SERVICES_ENCODER_TOKENIZERS_TOKENIZER_COMMON_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace dgrid::encoder {

// What `tokenizer(prompt, padding="max_length", max_length=N, truncation=True)` returns in
// transformers, plus what FluxPipeline computes from a second, untruncated call to warn the user.
struct TokenizedPrompt {
  // Exactly max_length ids: special tokens included, padded at the right with the pad id.
  std::vector<int32_t> input_ids;
  // Leading ids that are not padding (the attention mask's ones).
  int num_tokens = 0;
  // Length of the untruncated encoding, special tokens included (padding="longest").
  int untruncated_num_tokens = 0;
  // True when content tokens were cut to fit max_length; `removed_ids` holds them (in order).
  bool truncated = false;
  std::vector<int32_t> removed_ids;
};

// Splits text on exact occurrences of special tokens, taking at each position the longest token
// that starts there (leftmost-longest, like the added-token matcher of HF tokenizers). Immutable
// after construction; thread-safe to use concurrently.
class AddedTokenSplitter {
 public:
  struct Piece {
    bool is_token;  // true: `id` is the special token; false: `text` is ordinary text.
    int32_t id;
    absl::string_view text;  // Points into the string given to Split.
  };

  void Add(const std::string& content, int32_t id);
  // Pieces in order; ordinary text pieces are never empty.
  std::vector<Piece> Split(absl::string_view text) const;

 private:
  std::vector<std::pair<std::string, int32_t>> tokens_;  // Longest first.
};

// Builds the padded result from content ids: [prefix] content [suffix], content cut so that the
// total fits max_length (the special tokens are always kept), then padded with `pad_id`.
TokenizedPrompt TruncateAndPad(const std::vector<int32_t>& content,
                               const std::vector<int32_t>& prefix,
                               const std::vector<int32_t>& suffix, int max_length, int32_t pad_id);

// Reads a whole file. NOT_FOUND (naming the path) when it does not exist.
[[nodiscard]] absl::StatusOr<std::string> ReadFileToString(const std::string& path);
// Parses JSON text read from `path`; malformed JSON is INVALID_ARGUMENT naming the path.
[[nodiscard]] absl::StatusOr<nlohmann::json> ParseJsonFile(absl::string_view text,
                                                           const std::string& path);
// ReadFileToString + ParseJsonFile.
[[nodiscard]] absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);
bool FileExists(const std::string& path);

// The bytes of a tokenizer folder's files, by file name ("vocab.json"), so that a tokenizer can
// be built from bytes alone (tests, fuzzing). `dir` names the folder in errors.
struct TokenizerFiles {
  std::string dir;
  std::map<std::string, std::string> files;  // Absent files are not in the map.

  std::string Path(absl::string_view name) const { return absl::StrCat(dir, "/", name); }
  // The file's bytes, or nullptr when it is absent.
  const std::string* Find(absl::string_view name) const;
};

// Reads the `required` files of `dir` (NOT_FOUND naming the first that is missing) and those of
// the `optional` ones that exist.
[[nodiscard]] absl::StatusOr<TokenizerFiles> ReadTokenizerFiles(
    const std::string& dir, const std::vector<std::string>& required,
    const std::vector<std::string>& optional);

// tokenizer_config.json, then special_tokens_map.json for keys still missing, as one object (empty
// when neither is there). INVALID_ARGUMENT naming the file when one is not a JSON object.
[[nodiscard]] absl::StatusOr<nlohmann::json> MergedTokenizerConfig(const TokenizerFiles& files);

// The content of a special-token entry of tokenizer_config.json / special_tokens_map.json: either a
// string or an AddedToken object {"content": ...}. Empty when absent or of another type.
std::string SpecialTokenContent(const nlohmann::json& config, const char* key);

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_TOKENIZERS_TOKENIZER_COMMON_H_
