#!/usr/bin/env python3
"""Writes a tiny random FLUX pipeline in the Diffusers layout, with tokenizers trained on the spot.

The architecture is FLUX.1-dev's (guidance embedding, T5 + CLIP, 16-channel VAE with an 8x scale)
at toy widths, so it runs in well under a second per image on a CPU. Its weights are random: it draws
coloured noise, not pictures. It exists so that dgrid's loaders, services and the cluster can be run
and checked against diffusers' FluxPipeline without downloading anything.

    make_tiny_pipeline.py OUT_DIR [--seed 0]

Idempotent: does nothing when OUT_DIR/model_index.json exists and --force is not given.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "unit", "encoder", "tokenizers"))


def build(out_dir, seed, heads=2, layers=1, single_layers=2):
    import torch
    import transformers
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                           FluxTransformer2DModel)
    from make_tokenizer_fixtures import build_clip, build_t5  # trains tiny SentencePiece / BPE

    work = tempfile.mkdtemp(prefix="dgrid-tiny-")
    try:
        t5_dir, clip_dir = build_t5(work), build_clip(work)
        clip_tok = transformers.CLIPTokenizer.from_pretrained(clip_dir)
        t5_tok = transformers.T5TokenizerFast.from_pretrained(t5_dir)

        torch.manual_seed(seed)
        clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id, projection_dim=32))
        t5 = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_encoder_decoder=False,
            pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id))
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single_layers,
            attention_head_dim=16, num_attention_heads=heads, joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True, axes_dims_rope=[4, 6, 6])
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 16, 16],
            layers_per_block=1, latent_channels=16, norm_num_groups=8, scaling_factor=0.3611,
            shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
            mid_block_add_attention=True)
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096)
        pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                            text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
        tmp_out = out_dir + ".partial"
        shutil.rmtree(tmp_out, ignore_errors=True)
        pipe.save_pretrained(tmp_out)
        # FLUX checkpoints carry the vocabulary files (tokenizer/vocab.json + merges.txt,
        # tokenizer_2/spiece.model) besides tokenizer.json; transformers 5 saves only the latter.
        for folder, src, names in (("tokenizer", clip_dir, ("vocab.json", "merges.txt")),
                                   ("tokenizer_2", t5_dir, ("spiece.model",))):
            for name in names:
                if not os.path.exists(os.path.join(tmp_out, folder, name)):
                    shutil.copy(os.path.join(src, name), os.path.join(tmp_out, folder))
        with open(os.path.join(tmp_out, "dgrid.json"), "w") as f:
            json.dump({"name": "tiny-flux", "default_width": 64, "default_height": 64,
                       "default_steps": 4, "default_guidance": 3.5, "max_width": 512,
                       "max_height": 512, "max_sequence_length": 64}, f, indent=1)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp_out, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    # A slower transformer of the same kind (the defaults make the tests' tiny one).
    parser.add_argument("--heads", type=int, default=2, help="attention heads (x 16 dims)")
    parser.add_argument("--layers", type=int, default=1, help="double-stream blocks")
    parser.add_argument("--single-layers", type=int, default=2, help="single-stream blocks")
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out_dir)
    if os.path.exists(os.path.join(out_dir, "model_index.json")) and not args.force:
        print(f"tiny pipeline already at {out_dir}")
        return
    build(out_dir, args.seed, args.heads, args.layers, args.single_layers)
    print(f"tiny random FLUX pipeline written to {out_dir}")


if __name__ == "__main__":
    main()
