"""Tokenizers of the default model, trained on the caption language of shapes.py.

  build_t5(dir, lines)   -> dir/t5:   SentencePiece unigram model in T5's layout (pad=0, eos=1, unk=2,
                                      no bos, 100 <extra_id_*>), spiece.model + tokenizer_config.json
  build_clip(dir, lines) -> dir/clip: byte-level BPE in CLIP's layout (vocab.json + merges.txt, 256 byte
                                      symbols, the same with "</w>", merges, <|startoftext|>,
                                      <|endoftext|>) + tokenizer_config.json

Both are the files FLUX checkpoints carry, loadable by transformers (T5TokenizerFast, CLIPTokenizer)
and by dgrid's C++ tokenizers. Besides the captions, the corpus holds the ASCII letters and digits
so that any English word still tokenizes into known pieces.
"""
import io
import json
import os
import string

T5_EXTRA_IDS = 100


def _extra_lines():
    return [" ".join(string.ascii_lowercase), " ".join(string.ascii_uppercase),
            " ".join(string.digits), " ".join(string.punctuation)] * 20


def build_t5(out_dir, lines, vocab_size=400):
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines) + _extra_lines()), model_writer=model,
        vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2)
    folder = os.path.join(out_dir, "t5")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    extra = [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "additional_special_tokens": extra}, f, indent=1)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "extra_ids": T5_EXTRA_IDS, "additional_special_tokens": extra,
                   "model_max_length": 512, "tokenizer_class": "T5Tokenizer"}, f, indent=1)
    return folder


def build_clip(out_dir, lines, vocab_size=700):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=eos))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    # CLIP's pre-tokenization: contractions, letter runs, single digits, other non-space runs.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(lines) + _extra_lines(), trainer)
    trained = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in trained["merges"]]
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
    # As in FLUX.1's tokenizer folder: pad is <|endoftext|>, max length 77.
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": bos, "eos_token": eos, "pad_token": eos, "unk_token": eos,
                   "model_max_length": 77, "do_lower_case": True, "errors": "replace",
                   "tokenizer_class": "CLIPTokenizer"}, f, indent=1)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": bos, "eos_token": eos, "pad_token": eos, "unk_token": eos}, f,
                  indent=1)
    return folder
