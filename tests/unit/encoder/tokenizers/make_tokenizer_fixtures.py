#!/usr/bin/env python3
"""Reference data for tokenizer_test (dgrid T5Tokenizer / ClipTokenizer vs transformers).

Trains two tiny vocabularies from a generated corpus (nothing is downloaded):
  * t5/   : a SentencePiece unigram model laid out like T5's (pad=0, eos=1, unk=2, no bos) plus the
            tokenizer_config.json / special_tokens_map.json that the T5 tokenizer folders of FLUX carry;
  * clip/ : a byte-level BPE vocab.json + merges.txt in CLIP's layout (256 byte symbols, the same with
            "</w>", merges, <|startoftext|>, <|endoftext|>) plus tokenizer_config.json;
loads them with transformers' T5TokenizerFast / T5Tokenizer and CLIPTokenizerFast / CLIPTokenizer
(in transformers 5 each pair is one class; the script checks that both names agree), and writes the
ids of >= 1000 test strings, called the way diffusers' FluxPipeline calls them
(padding="max_length", truncation=True), to ${DGRID_BUILD_DIR}/parity/tokenizers/{t5,clip}_cases.json.
Also writes t5_normalizer_cases.json: the output of the T5 tokenizer's Precompiled normalizer (HF
`tokenizers`, grapheme by grapheme) for the T5 strings plus random strings of combining marks, spaces,
emoji, ZWJ, regional indicators, Hangul jamo, Indic scripts and full-width forms.
"""
import json
import os
import random
import sys
import time
import unicodedata

# The tokenizer builders (T5 / CLIP folder layouts) are shared with the default model's training.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..",
                                "tools"))
import tokenizer_builders  # noqa: E402

T5_MAX_LENGTH = 64
CLIP_MAX_LENGTH = tokenizer_builders.CLIP_MAX_LENGTH

WORDS = [
    "the", "a", "photo", "of", "cat", "dog", "sitting", "on", "mat", "astronaut", "riding", "horse",
    "mars", "sunset", "over", "mountains", "highly", "detailed", "4k", "8k", "cinematic", "lighting",
    "portrait", "woman", "man", "city", "night", "neon", "rain", "painting", "style", "van", "gogh",
    "it's", "don't", "we'll", "they're", "I've", "I'm", "he'd", "café", "naïve", "résumé", "Zürich",
    "straße", "façade", "jalapeño", "東京", "日本語", "漢字", "中文", "한국어", "서울", "ひらがな",
    "カタカナ", "Москва", "привет", "Ελλάδα", "ΣΟΦΙΑ", "مرحبا", "שלום", "नमस्ते", "ภาษาไทย", "😀",
    "🐱", "🚀", "👩‍🚀", "👍🏽", "🇫🇷", "❤️", "12", "3.14", "1,000", "2024-01-01", "#hashtag",
    "@user", "e-mail", "well-known", "C++", "x^2", "100%", "$5", "€10", "½", "²", "Ⅻ", "ﬁne",
    "ＦＵＬＬ", "１２３", "İstanbul", "DŽ", "Ǆ", "ǅ", "µ", "Å", "Ω", "K",
]
PUNCT = list(".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`…—–“”‘’«»¿¡·•")
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2009", "\u200b", "\u2028", "\x85",
          "\x0b", "\x0c"]
# Blocks assigned long ago, so Unicode version differences between Python, Rust and Oniguruma do not
# matter; sampled for random strings.
BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x250, 0x2AF), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
          (0x5D0, 0x5EA), (0x620, 0x64A), (0x900, 0x97F), (0xE00, 0xE5B), (0x1100, 0x11FF),
          (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x209C), (0x2100, 0x218B), (0x2190, 0x21FF),
          (0x2200, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x257F), (0x3000, 0x303F), (0x3040, 0x30FF),
          (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0xFB00, 0xFB06), (0xFF01, 0xFF9F), (0x1D400, 0x1D7FF),
          (0x1F300, 0x1F64F)]


def t5_special_cases():
    return ["</s>", "<pad>", "<unk>", "<extra_id_0>", "<extra_id_99>", "a</s>b", "x <extra_id_5> y",
            "<extra_id_100>", "</s></s>", "<extra_id_1><extra_id_2>", "< /s>", "</S>"]


def clip_special_cases():
    return ["<|startoftext|>", "<|endoftext|>", "a<|endoftext|>b", "<|ENDOFTEXT|>", "x <|startoftext|>y",
            "<|endoftext|><|endoftext|>", "<|endof text|>", "<|endoftext"]


def fixed_cases():
    return [
        "", " ", "   ", "\t", "\n", "\t \n \r\n", "a", "A", "Hello, World!", "hello world",
        "HELLO   WORLD", "  leading and trailing  ", "a photo of a cat", "it's I'M we'll THEY'RE you'd",
        "'s 't 're 've 'm 'll 'd", "''s", "don''t", "rock'n'roll", "...", "!!!???", "a.b,c;d:e", "(x)[y]{z}",
        "---", "___", "0", "7", "42", "1234567890", "3.14159", "1,000,000", "v1.2.3", "2024-01-01T12:00:00Z",
        "$100", "50%", "#1", "x^2+y^2=z^2", "MiXeD CaSe", "CamelCaseWord", "snake_case_word",
        "café", "cafe\u0301", "e\u0301", "a\u0300\u0301\u0302", "\u0301", " \u0301", "o\u0308\u0304",
        "\u1100\u1161\u11a8", "\u1100\u1161", "한국어", "naïve résumé", "Ångström", "A\u030a",
        "東京タワー", "日本語のテキスト", "中文字符", "漢字かなカナ", "😀", "😀😃😄", "👩‍🚀", "👍🏽",
        "🇫🇷🇩🇪", "❤️", "⭐", "a😀b", "ΣΟΦΙΑ", "ὈΔΥΣΣΕΎΣ", "İstanbul", "I\u0307", "STRASSE straße",
        "ß", "ẞ", "ﬁ ﬂ", "ＦＵＬＬ ｗｉｄｔｈ １２３", "①②③", "½ ¾", "x² y³", "Ⅻ ⅻ", "٣٤٥", "१२३",
        "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "ภาษาไทย", "Привет, мир!", "Ελληνικά",
        "\u00a0", "a\u00a0b", "a\u2009b", "a\u3000b", "a\u200bb", "a\u2028b", "a\u2029b", "a\x85b",
        "a\x0bb", "a\x0cb", "a\x1cb", "a\x00b", "a\x07b", "a\x1bb", "a\x7fb", "\ufeffbom", "a\u00adb",
        "a\u200db", "a\ufffdb", "𝐀𝐁𝐂 𝟏𝟐𝟑", "µ", "K", "Ω", "DŽ Ǆ ǅ ǆ", "ǰ", "ŉ", "ΐ", "ﬀ",
        "tab\tseparated\tvalues", "line1\nline2\nline3", "windows\r\nline", "<html><body>x</body></html>",
        "https://example.com/path?q=1&r=2", "user@example.com", "C:\\path\\to\\file", "emoji🚀rocket",
        "a" * 300, "ab " * 200, "🐱" * 100,
    ]


def grapheme_cases():
    """Strings where applying the charsmap per grapheme cluster (HF tokenizers) and over the whole text
    (SentencePiece) differ, or could: combining marks after whitespace or after other marks, clusters of
    6 bytes or more, ZWJ emoji sequences, regional-indicator flags, Hangul jamo, Indic conjuncts."""
    return [
        # Combining marks after whitespace, after other marks, after mapped characters.
        " \u0301", "a \u0301b", "x \u0308\u0301 y", "\t\u0301", "\n\u0300x", "\u00a0\u0301", "\u3000\u0302",
        "\u2009\u0301z", "e\u0301\u0301", "o\u0308\u0308\u0304", "a\u0300\u0301\u0302\u0303\u0304",
        "\uff45\u0301", "\uff21\u030a", "\u00b5\u0301", "\u00a8\u0301", "\u212b\u0301", "\u1e9b\u0323",
        "\u0301\u0301", "word \u0301\u0301 word", "\u0345\u0301", "\u0300 \u0300 \u0300", "\r\n\u0301",
        "a\u200d\u0301", "\u00a0\u09cd\u0926", "\uff76\uff9e", "\uff76\u3099", "\u304b\u3099", "\u0e01\u0e33",
        # Clusters of >= 6 bytes.
        "\u2764\ufe0f", "I \u2764\ufe0f NY", "\u263a\ufe0f", "\u00a9\ufe0f \u00ae\ufe0f", "\u2764\ufe0e",
        "1\ufe0f\u20e3", "#\ufe0f\u20e3", "\uff11\u20e3", "\u2122\ufe0f",
        # ZWJ sequences and modifiers.
        "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466", "\U0001f3f3\ufe0f\u200d\U0001f308",
        "\u2764\ufe0f\u200d\U0001f525", "\U0001f469\U0001f3fd\u200d\U0001f680", "\U0001f44d\U0001f3fb\U0001f44d",
        "a\u200db", "\u200d\U0001f600", "\U0001f600\u200d", "\u200d\u200d",
        # Regional indicators.
        "\U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8\U0001f1eb", "\U0001f1eb", "x\U0001f1e9\U0001f1ea\U0001f1ee",
        "\U0001f1e6 \U0001f1e8\u0301",
        # Hangul jamo and syllables.
        "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af", "\u1100\u1100\u1161",
        "\ud55c\u11a8", "\uac00\u1161", "\u1161\u11a8", "\u11a8\u11a8", "\u3131\u314f",
        "\uffa1\uffc2", "\u1100 \u1161",
        # Indic scripts.
        "\u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f", "\u0928\u092e\u0938\u094d\u0924\u0947",
        "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0915\u094d\u200d\u0937", "\u0915\u093c",
        "\u0958", "\u0930\u094d\u092f", "\u0995\u09cd\u09b7", "\u0d15\u0d4d\u0d15", " \u094d",
        "\u0600\u0661", "\u0e40\u0e01", "\u0e14\u0e35\u0e48",
    ]


def tricky_string(rng, max_chars):
    """Random characters from the code point groups where grapheme clustering matters."""
    pools = [list(range(0x20, 0x7F)), list(range(0x300, 0x370)),
             [0x20, 0x9, 0xA, 0xD, 0x3000, 0xA0, 0x200B, 0x200C, 0x200D, 0xFE0F, 0xFE0E, 0x20E3],
             list(range(0x1100, 0x1200)), list(range(0xAC00, 0xAC40)), list(range(0x1F1E6, 0x1F200)),
             list(range(0x900, 0x980)), list(range(0x980, 0xA00)), list(range(0x1F300, 0x1F400)),
             [0x2764, 0x263A, 0xA9, 0xAE, 0x1F3FB, 0x1F3FD], list(range(0xFF01, 0xFFA0)), list(range(0xC0, 0x250)),
             list(range(0x600, 0x606)), list(range(0xE00, 0xE5C)), list(range(0x1DC0, 0x1E00)),
             list(range(0x20D0, 0x2100)), list(range(0xFE20, 0xFE30)), list(range(0x3099, 0x309D)),
             list(range(0xE0020, 0xE0080)), list(range(0x1, 0x20)), list(range(0x7F, 0xA0))]
    chars = []
    while len(chars) < rng.randint(1, max_chars):
        ch = chr(rng.choice(rng.choice(pools)))
        if unicodedata.category(ch) not in ("Cn", "Cs", "Co"):
            chars.append(ch)
    return "".join(chars)


def write_normalizer_cases(tokenizer, strings, out_dir):
    import tokenizers
    rng = random.Random(4321)
    texts = strings[:-2] + [tricky_string(rng, 10) for _ in range(6000)]  # the two 100k strings aside
    normalizer = tokenizer.backend_tokenizer.normalizer
    cases = [{"text": t, "normalized": normalizer.normalize_str(t)} for t in texts]
    with open(os.path.join(out_dir, "t5_normalizer_cases.json"), "w") as f:
        json.dump({"reference": f"tokenizers {tokenizers.__version__} {type(normalizer).__name__}",
                   "cases": cases}, f)
    print(f"t5 normalizer: {len(cases)} strings -> {out_dir}/t5_normalizer_cases.json")


def random_string(rng, max_words, p_random_chars=0.2):
    parts = []
    for _ in range(rng.randint(1, max_words)):
        r = rng.random()
        if r < 0.55:
            w = rng.choice(WORDS)
            c = rng.random()
            if c < 0.15:
                w = w.upper()
            elif c < 0.3:
                w = w.capitalize()
            parts.append(w)
        elif r < 0.7:
            parts.append("".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 3))))
        elif r < 1.0 - p_random_chars:
            parts.append(str(rng.randint(0, 10**rng.randint(1, 8))))
        else:
            lo, hi = rng.choice(BLOCKS)
            chars = []
            while len(chars) < rng.randint(1, 6):
                ch = chr(rng.randint(lo, hi))
                if unicodedata.category(ch) not in ("Cn", "Cs", "Co"):
                    chars.append(ch)
            parts.append("".join(chars))
        parts.append(rng.choice(SPACES) if rng.random() < 0.9 else "")
    return "".join(parts)


def make_strings(specials):
    rng = random.Random(1234)
    cases = fixed_cases() + grapheme_cases() + specials
    tricky_rng = random.Random(77)
    cases += [tricky_string(tricky_rng, 12) for _ in range(150)]
    while len(cases) < 900:
        cases.append(random_string(rng, 12))
    while len(cases) < 1060:
        cases.append(random_string(rng, 120))  # mostly longer than max_length
    long_rng = random.Random(99)
    huge = random_string(long_rng, 30000)[:100000]
    huge = (huge * (100000 // max(len(huge), 1) + 1))[:100000]
    cases.append(huge)
    cases.append("a photo of a cat " * 6000)  # ~100k characters
    return cases


def corpus_lines(n):
    rng = random.Random(7)
    # Few random code points, so that most of them stay out of the vocabulary (unk paths get exercised).
    return [random_string(rng, 20, p_random_chars=0.01) for _ in range(n)]


def build_t5(out_dir):
    return tokenizer_builders.build_t5(out_dir, corpus_lines(3000), vocab_size=800,
                                       character_coverage=0.98)


def build_clip(out_dir):
    return tokenizer_builders.build_clip(out_dir, corpus_lines(3000), vocab_size=1200)


def expected(tokenizers_by_name, strings, max_length):
    """Ids for every string from each tokenizer name; all names must agree."""
    cases, disagreements = [], 0
    for text in strings:
        per_name = []
        for tok in tokenizers_by_name.values():
            padded = tok(text, padding="max_length", max_length=max_length, truncation=True)["input_ids"]
            full = tok(text, padding="longest")["input_ids"]
            per_name.append((padded, full))
        if any(p != per_name[0] for p in per_name[1:]):
            disagreements += 1
        padded, full = per_name[0]
        cases.append({"text": text, "ids": padded, "untruncated_ids": full})
    return cases, disagreements


def main():
    start = time.time()
    build_dir = os.environ.get("DGRID_BUILD_DIR") or (sys.argv[1] if len(sys.argv) > 1 else None)
    if not build_dir:
        sys.exit("set DGRID_BUILD_DIR or pass the build folder")
    out_dir = os.path.join(os.path.abspath(build_dir), "parity", "tokenizers")
    os.makedirs(out_dir, exist_ok=True)
    import transformers
    t5_dir = build_t5(out_dir)
    clip_dir = build_clip(out_dir)
    t5 = {"T5TokenizerFast": transformers.T5TokenizerFast.from_pretrained(t5_dir),
          "T5Tokenizer": transformers.T5Tokenizer.from_pretrained(t5_dir)}
    clip = {"CLIPTokenizer": transformers.CLIPTokenizer.from_pretrained(clip_dir),
            "CLIPTokenizerFast": transformers.CLIPTokenizerFast.from_pretrained(clip_dir)}
    for name, strings, toks, max_length, folder in (
            ("t5", make_strings(t5_special_cases()), t5, T5_MAX_LENGTH, t5_dir),
            ("clip", make_strings(clip_special_cases()), clip, CLIP_MAX_LENGTH, clip_dir)):
        cases, disagreements = expected(toks, strings, max_length)
        if disagreements:
            sys.exit(f"{name}: {disagreements} strings where {list(toks)} disagree")
        with open(os.path.join(out_dir, f"{name}_cases.json"), "w") as f:
            json.dump({"tokenizer_dir": folder, "max_length": max_length,
                       "reference": f"transformers {transformers.__version__} {' == '.join(toks)}",
                       "cases": cases}, f)
        print(f"{name}: {len(cases)} strings -> {out_dir}/{name}_cases.json")
    write_normalizer_cases(t5["T5TokenizerFast"], make_strings(t5_special_cases()), out_dir)
    print(f"done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
