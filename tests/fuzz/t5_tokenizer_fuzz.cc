// Fuzz target for the T5 / UMT5 tokenizer's files (spiece.model with its precompiled charsmap,
// tokenizer_config.json, special_tokens_map.json) and, once they load, for its encoding of a prompt
// (a client's bytes): dgrid::encoder::T5Tokenizer. SentencePiece itself is linked in directly
// (services/encoder/spm_module), not dlopen()ed as in the services.
//
// The input is spiece.model, tokenizer_config.json, special_tokens_map.json and a prompt,
// separated by "=====" lines (tokenizer_fuzz_util.h). The target aborts when loading fails other
// than with NOT_FOUND / INVALID_ARGUMENT / DATA_LOSS naming the folder, or when an encoding breaks
// its shape (exactly max_length ids, all inside the vocabulary). Memory errors, leaks and undefined
// behaviour are caught by the sanitizers it is built with.
#include <cstdint>
#include <string>

#include "services/encoder/tokenizers/t5_tokenizer.h"
#include "tests/fuzz/tokenizer_fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dgrid::encoder;  // NOLINT
  std::string prompt;
  const TokenizerFiles files = fuzz::SplitInput(
      absl::string_view(reinterpret_cast<const char*>(data), size),
      {"spiece.model", "tokenizer_config.json", "special_tokens_map.json"}, &prompt);
  absl::StatusOr<std::unique_ptr<T5Tokenizer>> tok = T5Tokenizer::FromFiles(files);
  if (!tok.ok()) {
    fuzz::CheckLoadError(tok.status());
    return 0;
  }
  fuzz::CheckEncode(**tok, prompt, 77);
  fuzz::CheckEncode(**tok, prompt, 1);
  return 0;
}
