// Shared by the tokenizer fuzz targets: the input format and the checks on an encoded prompt.
//
// An input is a tokenizer folder and a prompt in one byte string, sections separated by the line
// "=====": the tokenizer's files in the order the target names them (a missing section is an
// absent file, an empty one an empty file), then the prompt.
#ifndef DGRID_TESTS_FUZZ_TOKENIZER_FUZZ_UTIL_H_
#define DGRID_TESTS_FUZZ_TOKENIZER_FUZZ_UTIL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "services/encoder/tokenizers/tokenizer_common.h"
#include "tests/fuzz/fuzz_check.h"

namespace dgrid::encoder::fuzz {

inline constexpr absl::string_view kSeparator = "\n=====\n";
inline constexpr absl::string_view kDir = "fuzz/tokenizer";

using dgrid::fuzz::Check;

// Splits `input` into the files named by `names` and the prompt (empty when not given).
inline TokenizerFiles SplitInput(absl::string_view input, const std::vector<const char*>& names,
                                 std::string* prompt) {
  std::vector<absl::string_view> sections = absl::StrSplit(input, kSeparator);
  TokenizerFiles files;
  files.dir = std::string(kDir);
  for (size_t i = 0; i < names.size() && i < sections.size(); ++i) {
    files.files[names[i]] = std::string(sections[i]);
  }
  prompt->clear();
  if (sections.size() > names.size()) *prompt = std::string(sections[names.size()]);
  return files;
}

// A failed load is NOT_FOUND, INVALID_ARGUMENT or DATA_LOSS naming the folder.
inline void CheckLoadError(const absl::Status& status) {
  Check(status.code() == absl::StatusCode::kInvalidArgument ||
            status.code() == absl::StatusCode::kNotFound ||
            status.code() == absl::StatusCode::kDataLoss,
        "unexpected status code from loading");
  Check(absl::StrContains(status.message(), kDir), "load error does not name the folder");
}

// Encodes `prompt` at `max_length` and checks the result's shape: exactly max_length ids, all
// below vocab_size, the counts consistent. A failure must be INVALID_ARGUMENT.
template <typename Tokenizer>
void CheckEncode(const Tokenizer& tok, absl::string_view prompt, int max_length) {
  absl::StatusOr<TokenizedPrompt> encoded = tok.Encode(prompt, max_length);
  if (!encoded.ok()) {
    Check(encoded.status().code() == absl::StatusCode::kInvalidArgument,
          "unexpected status code from encoding");
    return;
  }
  Check(static_cast<int>(encoded->input_ids.size()) == max_length, "not max_length ids");
  for (int32_t id : encoded->input_ids) {
    Check(id >= 0 && id < tok.vocab_size(), "id outside the vocabulary");
  }
  Check(encoded->num_tokens >= 0 && encoded->num_tokens <= max_length, "num_tokens out of range");
  Check(encoded->untruncated_num_tokens >= encoded->num_tokens, "untruncated count too small");
  Check(encoded->truncated == !encoded->removed_ids.empty(), "truncated flag disagrees");
  tok.Decode(encoded->input_ids);
}

}  // namespace dgrid::encoder::fuzz

#endif  // DGRID_TESTS_FUZZ_TOKENIZER_FUZZ_UTIL_H_
