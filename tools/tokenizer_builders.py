"""Trains tiny tokenizers and writes them in the folder layouts FLUX checkpoints carry, loadable by
transformers (T5TokenizerFast / T5Tokenizer, CLIPTokenizer / CLIPTokenizerFast) and by dgrid's C++
tokenizers. Shared by the tokenizer parity fixtures (tests/unit/encoder/tokenizers) and the default
model's training (tools/train_default_model).

  build_t5(dir, lines, vocab_size, character_coverage) -> dir/t5:   SentencePiece unigram model in
      T5's layout (pad=0, eos=1, unk=2, no bos, 100 <extra_id_*>): spiece.model,
      special_tokens_map.json, tokenizer_config.json
  build_clip(dir, lines, vocab_size) -> dir/clip: byte-level BPE in CLIP's layout (vocab.json: 256
      byte symbols, the same with "</w>", the merges' results, <|startoftext|>, <|endoftext|>),
      merges.txt, tokenizer_config.json, special_tokens_map.json

Both are deterministic given the lines.
"""
import io
import json
import os

T5_EXTRA_IDS = 100
CLIP_MAX_LENGTH = 77


def build_t5(out_dir, lines, vocab_size, character_coverage=1.0):
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", character_coverage=character_coverage,
        hard_vocab_limit=False, minloglevel=2)
    folder = os.path.join(out_dir, "t5")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    extra = [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    # The v4-style files that the FLUX tokenizer_2 folders carry.
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "additional_special_tokens": extra}, f, indent=1)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "extra_ids": T5_EXTRA_IDS, "additional_special_tokens": extra,
                   "model_max_length": 512, "tokenizer_class": "T5Tokenizer"}, f, indent=1)
    return folder


def build_clip(out_dir, lines, vocab_size):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=eos))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    # CLIP's pre-tokenization: contractions, letter runs, single digits, other non-space runs.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(
            Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
            behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(lines), trainer)
    trained = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in trained["merges"]]
    # CLIP's layout: bytes, bytes + "</w>", merge results in merge order, then the special tokens.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    vocab = {}
    for sym in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(sym, len(vocab))
    for m in merges:
        a, b = m.split(" ")
        vocab.setdefault(a + b, len(vocab))
    vocab[bos] = len(vocab)
    vocab[eos] = len(vocab)
    folder = os.path.join(out_dir, "clip")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    # As in black-forest-labs/FLUX.1-*/tokenizer: pad is <|endoftext|>, max length 77.
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": bos, "eos_token": eos, "pad_token": eos, "unk_token": eos,
                   "model_max_length": CLIP_MAX_LENGTH, "do_lower_case": True, "errors": "replace",
                   "tokenizer_class": "CLIPTokenizer"}, f, indent=1)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": bos, "eos_token": eos, "pad_token": eos, "unk_token": eos}, f,
                  indent=1)
    return folder
