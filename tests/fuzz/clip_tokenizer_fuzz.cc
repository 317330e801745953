// Fuzz target for the CLIP tokenizer's files (vocab.json, merges.txt, tokenizer_config.json) and,
// once they load, for its encoding of a prompt (a client's bytes): dgrid::encoder::ClipTokenizer.
//
// The input is vocab.json, merges.txt, tokenizer_config.json and a prompt, separated by "====="
// lines (tokenizer_fuzz_util.h). The target aborts when loading fails other than with NOT_FOUND /
// INVALID_ARGUMENT / DATA_LOSS naming the folder, or when an encoding breaks its shape (exactly
// max_length ids, all inside the vocabulary). Memory errors, leaks and undefined behaviour are
// caught by the sanitizers it is built with.
#include <cstdint>
#include <string>

#include "services/encoder/tokenizers/clip_tokenizer.h"
#include "tests/fuzz/tokenizer_fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dgrid::encoder;  // NOLINT
  std::string prompt;
  const TokenizerFiles files =
      fuzz::SplitInput(absl::string_view(reinterpret_cast<const char*>(data), size),
                       {"vocab.json", "merges.txt", "tokenizer_config.json"}, &prompt);
  absl::StatusOr<std::unique_ptr<ClipTokenizer>> tok = ClipTokenizer::FromFiles(files);
  if (!tok.ok()) {
    fuzz::CheckLoadError(tok.status());
    return 0;
  }
  fuzz::Check((*tok)->model_max_length() > 0, "model_max_length not positive");
  fuzz::CheckEncode(**tok, prompt, ClipTokenizer::kDefaultMaxLength);
  fuzz::CheckEncode(**tok, prompt, 2);
  return 0;
}
