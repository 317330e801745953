#!/usr/bin/env python3
"""Reference data for encoder_models_test: tiny random transformers text encoders and their outputs.

Writes under $DGRID_BUILD_DIR/parity/encoder/:
  <case>/config.json + model.safetensors   (save_pretrained of a tiny random model)
  <case>.ref.safetensors                   (inputs and reference outputs, float32 CPU)

Cases: t5_a / t5_b (T5EncoderModel, gated-gelu = gelu_new), umt5_a / umt5_sharded
(UMT5EncoderModel, Wan's text encoder: a relative position bias in every block; umt5_sharded saved in
several safetensors shards), clip_quick (quick_gelu, first-EOS pooling),
clip_gelu (gelu, legacy eos_token_id == 2: argmax pooling, with a
token 2 planted before the real end-of-text token), clip_prefixed (clip_quick's weights under
the Hub's "text_model." prefix). Outputs come from models reloaded with from_pretrained, run with
transformers' default attention (sdpa), as FluxPipeline runs them.
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, UMT5Config,
                          UMT5EncoderModel)


def out_dir():
    build = os.environ.get("DGRID_BUILD_DIR")
    if not build:
        sys.exit("DGRID_BUILD_DIR is not set (run through ctest)")
    path = os.path.join(build, "parity", "encoder")
    os.makedirs(path, exist_ok=True)
    return path


def perturb_vectors(model, generator):
    # Norm weights start at 1 and biases at 0; random values make them matter.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=generator))


def make_t5(root, name, config, length, seed, cls=T5EncoderModel, shard=None):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(config).eval()
    perturb_vectors(model, g)
    with torch.no_grad():
        # Stronger position bias so that bucket mistakes show (UMT5: every block has its own).
        for block in model.encoder.block:
            attention = block.layer[0].SelfAttention
            if getattr(attention, "has_relative_attention_bias", False):
                bias = attention.relative_attention_bias.weight
                bias.copy_(torch.randn(bias.shape, generator=g))
    folder = os.path.join(root, name)
    model.save_pretrained(folder, max_shard_size=shard or "10GB")
    if shard and not os.path.exists(os.path.join(folder, "model.safetensors.index.json")):
        sys.exit(f"{name}: expected a sharded checkpoint")
    model = cls.from_pretrained(folder).eval()

    ids = torch.randint(0, config.vocab_size, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.int64)
    mask[1, length - 7:] = 0
    ids[1, length - 7:] = config.pad_token_id
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
        hidden_masked = model(input_ids=ids, attention_mask=mask).last_hidden_state
    save_file({"input_ids": ids, "attention_mask": mask, "hidden": hidden.contiguous(),
               "hidden_masked": hidden_masked.contiguous()},
              os.path.join(root, name + ".ref.safetensors"))


def clip_ids(generator, vocab, length, bos, eos, plant=None):
    """Rows "bos, words, eos, eos padding" (FLUX's CLIP tokenizer pads with the end-of-text token, so
    "first EOS" matters), one row ending exactly at the last position and one without any EOS. The
    end-of-text token is the largest id, as in CLIP's vocabulary. `plant` puts that id at position 2
    so that the two pooling rules of transformers pick different positions."""
    rows = []
    for eos_at in (5, length - 1, None):
        row = torch.randint(3, vocab - 2, (length,), generator=generator)
        row[0] = bos
        if plant is not None:
            row[2] = plant
        if eos_at is not None:
            row[eos_at:] = eos
        rows.append(row)
    return torch.stack(rows)


def make_clip(root, name, config, seed, ids_eos, plant=None, prefixed_copy=None):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CLIPTextModel(config).eval()
    perturb_vectors(model, g)
    folder = os.path.join(root, name)
    model.save_pretrained(folder)
    model = CLIPTextModel.from_pretrained(folder).eval()

    length = config.max_position_embeddings
    ids = clip_ids(g, config.vocab_size, length, config.bos_token_id, ids_eos, plant)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        out = model(input_ids=ids)
        out_masked = model(input_ids=ids, attention_mask=mask)
    save_file({"input_ids": ids, "attention_mask": mask,
               "hidden": out.last_hidden_state.contiguous(),
               "pooled": out.pooler_output.contiguous(),
               "hidden_masked": out_masked.last_hidden_state.contiguous(),
               "pooled_masked": out_masked.pooler_output.contiguous()},
              os.path.join(root, name + ".ref.safetensors"))

    if prefixed_copy:
        # The Hub's CLIP checkpoints (FLUX's text_encoder) keep the "text_model." prefix.
        target = os.path.join(root, prefixed_copy)
        os.makedirs(target, exist_ok=True)
        weights = load_file(os.path.join(folder, "model.safetensors"))
        save_file({"text_model." + k: v for k, v in weights.items()},
                  os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json")) as src, \
                open(os.path.join(target, "config.json"), "w") as dst:
            dst.write(src.read())
        reloaded = CLIPTextModel.from_pretrained(target).eval()
        with torch.no_grad():
            again = reloaded(input_ids=ids)
        if not torch.equal(again.last_hidden_state, out.last_hidden_state):
            sys.exit("transformers does not load the prefixed CLIP checkpoint identically")


def main():
    root = out_dir()
    make_t5(root, "t5_a", T5Config(vocab_size=200, d_model=64, d_kv=16, d_ff=96, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20,
                                   feed_forward_proj="gated-gelu"), length=40, seed=1)
    make_t5(root, "t5_b", T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                   num_heads=4, feed_forward_proj="gated-gelu"), length=24, seed=2)
    umt5 = dict(vocab_size=180, d_model=64, d_kv=16, d_ff=96, num_layers=3, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=20,
                feed_forward_proj="gated-gelu")
    make_t5(root, "umt5_a", UMT5Config(**umt5), length=40, seed=5, cls=UMT5EncoderModel)
    make_t5(root, "umt5_sharded", UMT5Config(**dict(umt5, d_model=32, d_kv=8, num_heads=2,
                                                    relative_attention_num_buckets=32,
                                                    relative_attention_max_distance=128)),
            length=24, seed=6, cls=UMT5EncoderModel, shard="30KB")
    make_clip(root, "clip_quick",
              CLIPTextConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                             hidden_act="quick_gelu", bos_token_id=298, eos_token_id=299,
                             pad_token_id=299),
              seed=3, ids_eos=299, prefixed_copy="clip_prefixed")
    make_clip(root, "clip_gelu",
              CLIPTextConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=12,
                             hidden_act="gelu", bos_token_id=1, eos_token_id=2, pad_token_id=1),
              seed=4, ids_eos=299, plant=2)
    print("encoder fixtures written to", root)


if __name__ == "__main__":
    main()
