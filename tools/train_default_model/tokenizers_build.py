"""Tokenizers of the default model, trained on the caption language of shapes.py, in the folder
layouts FLUX checkpoints carry (the builders are tools/tokenizer_builders.py, shared with the
tokenizer parity fixtures).

  build_t5(dir, lines)   -> dir/t5:   SentencePiece unigram, T5's layout, vocabulary ~300
  build_clip(dir, lines) -> dir/clip: byte-level BPE, CLIP's layout, vocabulary ~700

Besides the captions, the corpus holds the ASCII letters, digits and punctuation so that any
English word still tokenizes into known pieces.
"""
import os
import string
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tokenizer_builders  # noqa: E402


def _extra_lines():
    return [" ".join(string.ascii_lowercase), " ".join(string.ascii_uppercase),
            " ".join(string.digits), " ".join(string.punctuation)] * 20


def build_t5(out_dir, lines, vocab_size=400):
    return tokenizer_builders.build_t5(out_dir, list(lines) + _extra_lines(), vocab_size)


def build_clip(out_dir, lines, vocab_size=700):
    return tokenizer_builders.build_clip(out_dir, list(lines) + _extra_lines(), vocab_size)
