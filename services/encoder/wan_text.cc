#include "services/encoder/wan_text.h"

#include <cstdint>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "families/wan/wan_family.h"
#include "services/encoder/tokenizers/unicode_text.h"

namespace dgrid::encoder {
namespace {

// Python's str.isspace (what `\s` and strip() use): Unicode White_Space plus U+001C..U+001F.
bool PySpace(char32_t cp) { return IsSpace(cp) || (cp >= 0x1C && cp <= 0x1F); }

// html._replace_charref for a numeric reference: Python's table for NUL, CR and the windows-1252
// range 0x80..0x9F, U+FFFD for surrogates and values beyond U+10FFFF, nothing for the code points
// HTML forbids (C0 / C1 controls, noncharacters), the code point otherwise.
std::u32string NumericReference(uint64_t v) {
  static constexpr char32_t kCp1252[32] = {
      0x20AC, 0x81,   0x201A, 0x192,  0x201E, 0x2026, 0x2020, 0x2021, 0x2C6,  0x2030, 0x160,
      0x2039, 0x152,  0x8D,   0x17D,  0x8F,   0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
      0x2013, 0x2014, 0x2DC,  0x2122, 0x161,  0x203A, 0x153,  0x9D,   0x17E,  0x178};
  if (v == 0) return U"\uFFFD";
  if (v == 0x0D) return U"\r";
  if (v >= 0x80 && v <= 0x9F) return std::u32string(1, kCp1252[v - 0x80]);
  if ((v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF) return U"\uFFFD";
  const bool forbidden = (v >= 0x01 && v <= 0x08) || v == 0x0B || (v >= 0x0E && v <= 0x1F) ||
                         v == 0x7F || (v >= 0xFDD0 && v <= 0xFDEF) || (v & 0xFFFE) == 0xFFFE;
  if (forbidden) return U"";
  return std::u32string(1, static_cast<char32_t>(v));
}

// One pass of html.unescape over code points, for the references named in wan_text.h.
std::u32string Unescape(const std::u32string& in) {
  std::u32string out;
  size_t i = 0;
  auto ascii = [](char32_t c) { return c < 0x80 ? static_cast<char>(c) : '\0'; };
  while (i < in.size()) {
    if (in[i] != U'&') {
      out.push_back(in[i++]);
      continue;
    }
    size_t j = i + 1;
    if (j < in.size() && in[j] == U'#') {
      // &#NNN;? or &#xHH;? (the ';' is optional, as in Python).
      ++j;
      const bool hex = j < in.size() && (in[j] == U'x' || in[j] == U'X');
      if (hex) ++j;
      const size_t digits_start = j;
      std::string digits;
      while (j < in.size() &&
             (hex ? absl::ascii_isxdigit(ascii(in[j])) : absl::ascii_isdigit(ascii(in[j])))) {
        digits.push_back(ascii(in[j++]));
      }
      if (j == digits_start) {
        out.push_back(in[i++]);
        continue;
      }
      if (j < in.size() && in[j] == U';') ++j;
      uint64_t value = 0;
      bool overflow = false;
      for (char d : digits) {
        const int v = absl::ascii_isdigit(d) ? d - '0' : absl::ascii_tolower(d) - 'a' + 10;
        value = value * (hex ? 16 : 10) + v;
        if (value > 0x10FFFF) overflow = true;
      }
      out.append(NumericReference(overflow ? 0x110000 : value));
      i = j;
      continue;
    }
    bool matched = false;
    for (const auto& [name, cp] : {std::pair<const char32_t*, char32_t>{U"amp;", U'&'},
                                   {U"lt;", U'<'},
                                   {U"gt;", U'>'},
                                   {U"quot;", U'"'},
                                   {U"apos;", U'\''},
                                   {U"nbsp;", 0xA0}}) {
      const std::u32string n(name);
      if (in.compare(j, n.size(), n) == 0) {
        out.push_back(cp);
        i = j + n.size();
        matched = true;
        break;
      }
    }
    // The legacy references that HTML5 (and Python) also accept without the ';'.
    for (const auto& [name, cp] : {std::pair<const char32_t*, char32_t>{U"amp", U'&'},
                                   {U"lt", U'<'},
                                   {U"gt", U'>'},
                                   {U"quot", U'"'},
                                   {U"nbsp", 0xA0}}) {
      if (matched) break;
      const std::u32string n(name);
      if (in.compare(j, n.size(), n) == 0) {
        out.push_back(cp);
        i = j + n.size();
        matched = true;
      }
    }
    if (!matched) out.push_back(in[i++]);
  }
  return out;
}

std::u32string Strip(const std::u32string& s) {
  size_t b = 0, e = s.size();
  while (b < e && PySpace(s[b])) ++b;
  while (e > b && PySpace(s[e - 1])) --e;
  return s.substr(b, e - b);
}

}  // namespace

absl::StatusOr<std::string> WanPromptClean(absl::string_view text) {
  ASSIGN_OR_RETURN(std::u32string cps, DecodeUtf8(text));
  // basic_clean: html.unescape(html.unescape(text)).strip()
  cps = Strip(Unescape(Unescape(cps)));
  // whitespace_clean: re.sub(r"\s+", " ", text).strip()
  std::u32string collapsed;
  bool in_space = false;
  for (char32_t cp : cps) {
    if (PySpace(cp)) {
      if (!in_space) collapsed.push_back(U' ');
      in_space = true;
    } else {
      collapsed.push_back(cp);
      in_space = false;
    }
  }
  return EncodeUtf8(Strip(collapsed));
}

absl::StatusOr<std::unique_ptr<WanTextEncoder>> WanTextEncoder::Load(const std::string& model_dir,
                                                                     const LoadOptions& options,
                                                                     bool model_offload) {
  auto encoder = std::unique_ptr<WanTextEncoder>(new WanTextEncoder());
  ASSIGN_OR_RETURN(encoder->tokenizer_, T5Tokenizer::Load(model_dir + "/tokenizer"));
  ASSIGN_OR_RETURN(
      PlacedModel<T5EncoderModel> model,
      LoadPlacedT5("text_encoder", model_dir + "/text_encoder", options, model_offload));
  if (!model.host().config().bias_per_block) {
    return InvalidArgument(model_dir, "/text_encoder/config.json: Wan's text encoder is UMT5 ",
                           "(model_type \"umt5\")");
  }
  encoder->model_ = std::make_unique<PlacedModel<T5EncoderModel>>(std::move(model));
  return encoder;
}

absl::StatusOr<at::Tensor> WanTextEncoder::Encode(absl::string_view prompt,
                                                  int max_sequence_length) const {
  ASSIGN_OR_RETURN(std::string clean, WanPromptClean(prompt));
  ASSIGN_OR_RETURN(TokenizedPrompt tokens, tokenizer_->Encode(clean, max_sequence_length));
  const int64_t length = static_cast<int64_t>(tokens.input_ids.size());
  ASSIGN_OR_RETURN(auto inputs, TorchCall("Wan text inputs", [&] {
                     at::Tensor ids = at::tensor(tokens.input_ids, at::kLong).view({1, length});
                     at::Tensor mask = at::zeros({1, length}, at::kLong);
                     mask.slice(1, 0, tokens.num_tokens).fill_(1);
                     return std::make_pair(ids, mask);
                   }));
  at::Tensor hidden;
  {
    // Offloaded, the encoder is on its device for this call only.
    ASSIGN_OR_RETURN(const std::shared_ptr<const T5EncoderModel> model, model_->Use());
    ASSIGN_OR_RETURN(hidden, model->Encode(inputs.first, inputs.second));
  }
  return TorchCall("Wan text trim", [&] {
    c10::InferenceMode inference;
    // u[:seq_len], then zeros up to max_sequence_length.
    at::Tensor out = at::zeros_like(hidden);
    out.slice(1, 0, tokens.num_tokens).copy_(hidden.slice(1, 0, tokens.num_tokens));
    return out;
  });
}

namespace {

class WanTextConditioner final : public TextConditioner {
 public:
  explicit WanTextConditioner(std::unique_ptr<WanTextEncoder> encoder)
      : encoder_(std::move(encoder)) {}
  absl::StatusOr<NamedTensors> Encode(absl::string_view /*request_id*/, absl::string_view /*field*/,
                                      const std::string& text, int max_sequence_length,
                                      const CancellationToken& token) const override {
    RETURN_IF_ERROR(token.Check());
    NamedTensors out;
    ASSIGN_OR_RETURN(out[families::wan::kPromptEmbeds],
                     encoder_->Encode(text, max_sequence_length));
    return out;
  }
  std::vector<const ModelResidency*> residencies() const override {
    if (encoder_->residency() == nullptr) return {};
    return {encoder_->residency()};
  }

 private:
  std::unique_ptr<WanTextEncoder> encoder_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TextConditioner>> LoadWanTextConditioner(const ModelIndex& index,
                                                                        const LoadOptions& load,
                                                                        bool model_offload) {
  ASSIGN_OR_RETURN(std::unique_ptr<WanTextEncoder> encoder,
                   WanTextEncoder::Load(index.root, load, model_offload));
  return std::unique_ptr<TextConditioner>(std::make_unique<WanTextConditioner>(std::move(encoder)));
}

}  // namespace dgrid::encoder
