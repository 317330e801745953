#!/usr/bin/env python3
"""Assembles train.py's output into the Diffusers FLUX pipeline folder dgrid serves by default.

    export.py RUN_DIR MODEL_DIR [--dtype float16]

RUN_DIR holds components/{text_encoder,text_encoder_2,vae,transformer} (save_pretrained folders)
and tokenizers/{t5,clip}. MODEL_DIR gets model_index.json, every component in `dtype`, the
scheduler config, both tokenizers with their vocabulary files (as FLUX.1 checkpoints carry them)
and dgrid.json (name, default size and steps, limits).
"""
import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train import SCHEDULER, T5_LEN  # noqa: E402

NAME = "dgrid-shapes"
DEFAULT_STEPS = 16


def export(run_dir, model_dir, dtype="float16"):
    import torch
    import transformers
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                           FluxTransformer2DModel)
    comp = os.path.join(run_dir, "components")
    t5_dir = os.path.join(run_dir, "tokenizers", "t5")
    clip_dir = os.path.join(run_dir, "tokenizers", "clip")
    torch_dtype = getattr(torch, dtype)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=AutoencoderKL.from_pretrained(os.path.join(comp, "vae")),
        text_encoder=transformers.CLIPTextModel.from_pretrained(os.path.join(comp, "text_encoder")),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(clip_dir),
        text_encoder_2=transformers.T5EncoderModel.from_pretrained(
            os.path.join(comp, "text_encoder_2")),
        tokenizer_2=transformers.T5TokenizerFast.from_pretrained(t5_dir),
        transformer=FluxTransformer2DModel.from_pretrained(os.path.join(comp, "transformer")))
    pipe.to(torch_dtype)
    tmp = model_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    for folder, src, names in (("tokenizer", clip_dir, ("vocab.json", "merges.txt")),
                               ("tokenizer_2", t5_dir, ("spiece.model",))):
        for name in names:
            if not os.path.exists(os.path.join(tmp, folder, name)):
                shutil.copy(os.path.join(src, name), os.path.join(tmp, folder))
    with open(os.path.join(tmp, "dgrid.json"), "w") as f:
        json.dump({"name": NAME, "default_width": 64, "default_height": 64,
                   "default_steps": DEFAULT_STEPS, "default_guidance": 3.5, "max_width": 256,
                   "max_height": 256, "max_sequence_length": T5_LEN}, f, indent=1)
        f.write("\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("model_dir")
    p.add_argument("--dtype", default="float16")
    a = p.parse_args()
    export(a.run_dir, os.path.abspath(a.model_dir), a.dtype)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(a.model_dir) for f in fs)
    print(f"{a.model_dir}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
