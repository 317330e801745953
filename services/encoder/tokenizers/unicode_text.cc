#include "services/encoder/tokenizers/unicode_text.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

#include "common/status.h"

namespace dgrid::encoder {
namespace {

struct CodepointRange {
  char32_t first;
  char32_t last;
};
struct CodepointPair {
  char32_t cp;
  char32_t value;
};
struct CodepointExpansion {
  char32_t cp;
  char32_t to[3];
};
struct CodepointExpansion4 {
  char32_t cp;
  char32_t to[4];
};
struct CodepointTriple {
  char32_t first;
  char32_t second;
  char32_t composite;
};

#include "services/encoder/tokenizers/unicode_data.inc"

template <size_t N>
bool InRanges(const CodepointRange (&table)[N], char32_t cp) {
  const CodepointRange* it =
      std::upper_bound(std::begin(table), std::end(table), cp,
                       [](char32_t value, const CodepointRange& r) { return value < r.first; });
  return it != std::begin(table) && cp <= (it - 1)->last;
}

template <typename T, size_t N>
const T* FindByCp(const T (&table)[N], char32_t cp) {
  const T* it = std::lower_bound(std::begin(table), std::end(table), cp,
                                 [](const T& e, char32_t value) { return e.cp < value; });
  return (it != std::end(table) && it->cp == cp) ? it : nullptr;
}

// Hangul syllables are decomposed/composed arithmetically (Unicode ch. 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

int CombiningClass(char32_t cp) {
  const CodepointPair* e = FindByCp(kCombiningClass, cp);
  return e ? static_cast<int>(e->value) : 0;
}

void AppendDecomposition(char32_t cp, std::u32string* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const int s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  if (const CodepointExpansion4* e = FindByCp(kDecompositions, cp)) {
    for (char32_t c : e->to) {
      if (c != 0) out->push_back(c);
    }
    return;
  }
  out->push_back(cp);
}

// Returns the primary composite of (a, b), or 0 when there is none.
char32_t Compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const CodepointTriple* it =
      std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::make_pair(a, b),
                       [](const CodepointTriple& e, const std::pair<char32_t, char32_t>& key) {
                         return std::make_pair(e.first, e.second) < key;
                       });
  if (it != std::end(kCompositions) && it->first == a && it->second == b) return it->composite;
  return 0;
}

}  // namespace

absl::StatusOr<std::u32string> DecodeUtf8(absl::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b0 = s[i];
    int len;
    char32_t cp, min_cp;
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2, cp = b0 & 0x1F, min_cp = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3, cp = b0 & 0x0F, min_cp = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4, cp = b0 & 0x07, min_cp = 0x10000;
    } else {
      return InvalidArgument("prompt is not valid UTF-8: bad lead byte at offset ", i);
    }
    if (i + len > n)
      return InvalidArgument("prompt is not valid UTF-8: truncated sequence at offset ", i);
    for (int k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) {
        return InvalidArgument("prompt is not valid UTF-8: bad continuation byte at offset ",
                               i + k);
      }
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) {
      return InvalidArgument(
          "prompt is not valid UTF-8: overlong, surrogate or out-of-range code point at offset ",
          i);
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

char32_t NextCodepoint(absl::string_view text, size_t* pos) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data()) + *pos;
  const size_t left = text.size() - *pos;
  const size_t len = s[0] < 0x80             ? 1
                     : (s[0] & 0xE0) == 0xC0 ? 2
                     : (s[0] & 0xF0) == 0xE0 ? 3
                     : (s[0] & 0xF8) == 0xF0 ? 4
                                             : 0;
  bool complete = len > 0 && len <= left;
  for (size_t i = 1; complete && i < len; ++i) complete = (s[i] & 0xC0) == 0x80;
  if (!complete) {
    *pos += 1;
    return 0xFFFD;
  }
  *pos += len;
  switch (len) {
    case 1:
      return s[0];
    case 2:
      return ((s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3:
      return ((s[0] & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default:
      return ((s[0] & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
  }
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string EncodeUtf8(const std::u32string& cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t cp : cps) AppendUtf8(cp, &out);
  return out;
}

bool IsLetter(char32_t cp) { return InRanges(kLetterRanges, cp); }
bool IsNumber(char32_t cp) { return InRanges(kNumberRanges, cp); }
bool IsSpace(char32_t cp) { return InRanges(kSpaceRanges, cp); }

void AppendLowercase(char32_t cp, std::u32string* out) {
  if (cp < 0x80) {
    out->push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  if (const CodepointPair* e = FindByCp(kLowerSingle, cp)) {
    out->push_back(e->value);
    return;
  }
  if (const CodepointExpansion* e = FindByCp(kLowerMulti, cp)) {
    for (char32_t c : e->to) {
      if (c != 0) out->push_back(c);
    }
    return;
  }
  out->push_back(cp);
}

std::u32string NormalizeNfc(const std::u32string& text) {
  // Fast path: ASCII is always NFC.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x80; })) return text;
  std::u32string d;
  d.reserve(text.size());
  for (char32_t cp : text) AppendDecomposition(cp, &d);
  // Canonical ordering: stable sort of every run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (CombiningClass(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && CombiningClass(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  // Canonical composition: a character joins the last starter unless a character in between with a
  // class >= its own blocks it (or, for class 0, anything at all lies in between).
  std::u32string out;
  out.reserve(d.size());
  size_t starter = std::u32string::npos;
  int last_class = -1;
  for (char32_t cp : d) {
    const int cc = CombiningClass(cp);
    if (starter != std::u32string::npos) {
      const bool blocked = last_class != -1 && (last_class >= cc || last_class == 0);
      if (!blocked) {
        if (char32_t comp = Compose(out[starter], cp)) {
          out[starter] = comp;
          continue;
        }
      }
    }
    if (cc == 0) {
      starter = out.size();
      last_class = -1;
    } else {
      last_class = cc;
    }
    out.push_back(cp);
  }
  return out;
}

}  // namespace dgrid::encoder
