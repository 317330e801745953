#include "services/encoder/tokenizers/grapheme.h"

#include <algorithm>
#include <iterator>

#include "services/encoder/tokenizers/unicode_text.h"

namespace dgrid::encoder {
namespace {

struct GraphemeRange {
  char32_t first;
  char32_t last;
  GraphemeBreak gcb;
  bool extended_pictographic;
  ConjunctBreak incb;
};

#include "services/encoder/tokenizers/grapheme_data.inc"

constexpr char32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;
constexpr int kHangulTCount = 28;

bool IsControlLike(GraphemeBreak b) {
  return b == GraphemeBreak::kControl || b == GraphemeBreak::kCr || b == GraphemeBreak::kLf;
}

// Whether rules GB3-GB8 and GB9-GB9b keep `prev` and `next` together, or force a break
// (`*decided` set); the rules that need more context than one pair are left to the caller.
bool PairRule(GraphemeBreak prev, GraphemeBreak next, bool* decided) {
  using B = GraphemeBreak;
  *decided = true;
  if (prev == B::kCr && next == B::kLf) return true;             // GB3
  if (IsControlLike(prev) || IsControlLike(next)) return false;  // GB4, GB5
  if (prev == B::kL && (next == B::kL || next == B::kV || next == B::kLv || next == B::kLvt))
    return true;                                                                           // GB6
  if ((prev == B::kLv || prev == B::kV) && (next == B::kV || next == B::kT)) return true;  // GB7
  if ((prev == B::kLvt || prev == B::kT) && next == B::kT) return true;                    // GB8
  if (next == B::kExtend || next == B::kZwj) return true;                                  // GB9
  if (next == B::kSpacingMark) return true;                                                // GB9a
  if (prev == B::kPrepend) return true;                                                    // GB9b
  *decided = false;
  return false;
}

}  // namespace

GraphemeProperties GetGraphemeProperties(char32_t cp) {
  if (cp >= kHangulFirst && cp <= kHangulLast) {
    return {(cp - kHangulFirst) % kHangulTCount == 0 ? GraphemeBreak::kLv : GraphemeBreak::kLvt,
            false, ConjunctBreak::kNone};
  }
  const GraphemeRange* it =
      std::upper_bound(std::begin(kGraphemeRanges), std::end(kGraphemeRanges), cp,
                       [](char32_t value, const GraphemeRange& r) { return value < r.first; });
  if (it == std::begin(kGraphemeRanges) || cp > (it - 1)->last) return {};
  --it;
  return {it->gcb, it->extended_pictographic, it->incb};
}

size_t GraphemeEnd(absl::string_view text, size_t start) {
  size_t pos = start;
  char32_t cp = NextCodepoint(text, &pos);
  // Printable ASCII followed by printable ASCII: the common case needs no table look-up (no ASCII
  // character is Extend, ZWJ or SpacingMark).
  auto is_plain_ascii = [](unsigned char c) { return c >= 0x20 && c < 0x7F; };
  if (cp < 0x80 && is_plain_ascii(static_cast<unsigned char>(cp)) &&
      (pos == text.size() || is_plain_ascii(static_cast<unsigned char>(text[pos])))) {
    return pos;
  }
  GraphemeProperties prev = GetGraphemeProperties(cp);
  // Context for the rules that look further back than one character, over the cluster so far.
  // GB9c: 0 = no conjunct, 1 = Consonant [Extend Linker]*, 2 = ... with a Linker seen.
  int conjunct = prev.incb == ConjunctBreak::kConsonant ? 1 : 0;
  // GB11: 0 = none, 1 = ExtPict Extend*, 2 = ExtPict Extend* ZWJ.
  int emoji = prev.extended_pictographic ? 1 : 0;
  // GB12/13: regional indicators seen in a row (a cluster never starts inside a pair).
  int regional = prev.gcb == GraphemeBreak::kRegionalIndicator ? 1 : 0;
  while (pos < text.size()) {
    size_t next_pos = pos;
    const GraphemeProperties next = GetGraphemeProperties(NextCodepoint(text, &next_pos));
    bool decided = false;
    bool join = PairRule(prev.gcb, next.gcb, &decided);
    if (!decided) {
      join = (conjunct == 2 && next.incb == ConjunctBreak::kConsonant) ||           // GB9c
             (emoji == 2 && next.extended_pictographic) ||                          // GB11
             (next.gcb == GraphemeBreak::kRegionalIndicator && regional % 2 == 1);  // GB12/13
    }
    if (!join) break;  // GB999
    if (next.incb == ConjunctBreak::kConsonant) {
      conjunct = 1;
    } else if (conjunct != 0 && next.incb == ConjunctBreak::kLinker) {
      conjunct = 2;
    } else if (conjunct != 0 && next.incb != ConjunctBreak::kExtend) {
      conjunct = 0;
    }
    if (next.extended_pictographic) {
      emoji = 1;
    } else if (emoji == 1 && next.gcb == GraphemeBreak::kZwj) {
      emoji = 2;
    } else if (!(emoji == 1 && next.gcb == GraphemeBreak::kExtend)) {
      emoji = 0;
    }
    regional = next.gcb == GraphemeBreak::kRegionalIndicator ? regional + 1 : 0;
    prev = next;
    pos = next_pos;
  }
  return pos;
}

}  // namespace dgrid::encoder
