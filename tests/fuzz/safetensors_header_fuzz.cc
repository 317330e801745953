// Fuzz target for dgrid::ParseSafetensorsHeader (common/safetensors_header.cc).
//
// The input is a whole safetensors file. The target aborts (a crash for libFuzzer and for the
// deterministic driver alike) when the parser breaks its contract:
//  * an error other than DATA_LOSS / INVALID_ARGUMENT, or one that does not name the file;
//  * an accepted header whose tensors are out of range, overlap, are not sorted, or whose byte
//    lengths disagree with dtype x shape;
//  * a different answer when given only the prefix the header needs (the documented contract).
// Memory errors and undefined behaviour are caught by the sanitizers the target is built with.
//
// Its custom mutator (used by libFuzzer and by the shared driver alike) edits the header text or
// the data section and re-writes a consistent length prefix, so that most edits reach the JSON
// checks instead of failing the length check; now and then it breaks the raw bytes, prefix
// included. The seeds are in corpus/safetensors_header/.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/safetensors_header.h"

namespace {

constexpr absl::string_view kFileName = "fuzz.safetensors";

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "safetensors_header_fuzz: contract violated: %s\n", what);
  std::abort();
}

void Check(bool ok, const char* what) {
  if (!ok) Fail(what);
}

void CheckAccepted(const dgrid::SafetensorsHeader& header, uint64_t file_size) {
  Check(header.data_offset >= 8 && header.data_offset <= file_size, "data_offset out of range");
  const uint64_t data_size = file_size - header.data_offset;
  const dgrid::SafetensorsTensorInfo* previous = nullptr;
  uint64_t max_end = 0;
  for (const dgrid::SafetensorsTensorInfo& info : header.tensors) {
    Check(info.begin <= info.end, "begin > end");
    Check(info.end <= data_size, "tensor past the end of the data section");
    Check(previous == nullptr || previous->begin <= info.begin, "tensors not sorted by begin");
    uint64_t bytes = dgrid::SafetensorsDtypeSize(info.dtype);
    for (int64_t dim : info.shape) {
      Check(dim >= 0, "negative dimension accepted");
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) {
        Fail("overflowing shape accepted");
      }
    }
    Check(bytes == info.end - info.begin, "byte length disagrees with dtype x shape");
    if (info.begin != info.end) {
      Check(info.begin >= max_end, "overlapping tensors accepted");
      max_end = info.end;
    }
    previous = &info;
  }
}

constexpr const char* kTokens[] = {
    "-1",
    "0",
    "18446744073709551615",
    "9223372036854775807",
    "1e999",
    "1.5",
    "null",
    "true",
    "\"\"",
    "\"F8_E4M3\"",
    "\"F32\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "\"__metadata__\"",
    "\\u0000",
    "\"",
    "[]",
    "{}",
    "4294967296",
    "\xff\xfe",
    "\"data_offsets\"",
    "\"shape\"",
    "\"dtype\"",
};

// One edit of a text: a bit flip, an interesting byte, a token inserted or replacing a range, a
// deletion, a duplicated range or a truncation.
void EditText(std::mt19937& rng, std::string* s) {
  const auto below = [&rng](size_t n) {
    return n == 0 ? size_t{0} : std::uniform_int_distribution<size_t>(0, n - 1)(rng);
  };
  const size_t pos = below(s->size() + 1);
  switch (below(7)) {
    case 0:
      if (!s->empty()) (*s)[below(s->size())] ^= static_cast<char>(1u << below(8));
      break;
    case 1:
      if (!s->empty()) (*s)[below(s->size())] = "\0\xff\"{}[],:-0123456789\\ "[below(22)];
      break;
    case 2:
      s->insert(pos, kTokens[below(std::size(kTokens))]);
      break;
    case 3:
      s->replace(pos, below(8), kTokens[below(std::size(kTokens))]);
      break;
    case 4:
      s->erase(pos, below(16) + 1);
      break;
    case 5:
      if (!s->empty()) s->insert(pos, s->substr(below(s->size()), below(32) + 1));
      break;
    default:
      s->resize(below(s->size() + 1));
      break;
  }
}

}  // namespace

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  std::mt19937 rng(seed);
  // Split at the length prefix when it fits the input; otherwise everything is header text.
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  uint64_t length = 0;
  for (int i = 0; i < 8 && size >= 8; ++i) {
    length |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  }
  std::string header, section;
  if (size >= 8 && length <= size - 8) {
    header = bytes.substr(8, length);
    section = bytes.substr(8 + length);
  } else {
    header = size >= 8 ? bytes.substr(8) : bytes;
  }
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < edits; ++i) EditText(rng, rng() % 10 == 0 ? &section : &header);
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header;
  file += section;
  size_t out = std::min(file.size(), max_size);
  std::memcpy(data, file.data(), out);
  // Now and then break the raw bytes too, length prefix included.
  if (rng() % 8 == 0) out = LLVMFuzzerMutate(data, out, max_size);
  return out;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view file(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<dgrid::SafetensorsHeader> header =
      dgrid::ParseSafetensorsHeader(file, size, kFileName);
  if (!header.ok()) {
    const absl::StatusCode code = header.status().code();
    Check(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kInvalidArgument,
          "unexpected status code");
    Check(absl::StartsWith(header.status().message(), kFileName), "error does not name the file");
    return 0;
  }
  CheckAccepted(*header, size);
  // The parser needs only the first data_offset bytes.
  absl::StatusOr<dgrid::SafetensorsHeader> again =
      dgrid::ParseSafetensorsHeader(file.substr(0, header->data_offset), size, kFileName);
  Check(again.ok() && again->tensors.size() == header->tensors.size() &&
            again->metadata == header->metadata,
        "prefix-only parse differs");
  return 0;
}
