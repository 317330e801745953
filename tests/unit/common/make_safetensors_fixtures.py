#!/usr/bin/env python3
"""Writes safetensors files with the reference `safetensors` package for checkpoint_test.

Output: ${DGRID_BUILD_DIR}/parity/common/safetensors/
  single.safetensors        every dtype dgrid reads, written by safetensors.torch.save_file
  sharded/                  two shards + model.safetensors.index.json (the transformers layout)
  expected.json             per tensor: dtype, shape, raw little-endian bytes (hex) and, for floating
                            types, the values as float64 (exact for every float type here), so that
                            the C++ test checks loading against an independent description
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file


def tensors():
    gen = torch.Generator().manual_seed(1234)
    out = {
        "f32.weight": torch.randn(3, 5, generator=gen),
        "f64.bias": torch.randn(4, generator=gen, dtype=torch.float64),
        "f16.weight": torch.randn(2, 3, 2, generator=gen).to(torch.float16),
        "bf16.weight": torch.randn(6, 2, generator=gen).to(torch.bfloat16),
        "i64.ids": torch.tensor([-3, 0, 7, 2**40], dtype=torch.int64),
        "i32.ids": torch.tensor([[1, -2], [2**30, 4]], dtype=torch.int32),
        "i16.ids": torch.tensor([-300, 300], dtype=torch.int16),
        "i8.ids": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8.ids": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool.mask": torch.tensor([True, False, True]),
        "f8.weight": (torch.randn(2, 4, generator=gen) * 4).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }
    return out


def describe(t):
    flat = t.reshape(-1).contiguous()
    entry = {
        "dtype": str(t.dtype).replace("torch.", ""),
        "shape": list(t.shape),
        "hex": flat.view(torch.uint8).numpy().tobytes().hex(),
    }
    if t.dtype.is_floating_point:
        entry["values"] = flat.to(torch.float64).tolist()
    return entry


def main():
    build = os.environ.get("DGRID_BUILD_DIR")
    if not build:
        sys.exit("DGRID_BUILD_DIR is not set (run through ctest)")
    out = os.path.join(build, "parity", "common", "safetensors")
    os.makedirs(os.path.join(out, "sharded"), exist_ok=True)

    all_tensors = tensors()
    save_file(all_tensors, os.path.join(out, "single.safetensors"), metadata={"format": "pt"})

    # Sharded: split the tensors over two files and index them as transformers' save_pretrained does.
    names = sorted(all_tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    total = 0
    for shard, shard_names in shards.items():
        part = {n: all_tensors[n] for n in shard_names}
        save_file(part, os.path.join(out, "sharded", shard), metadata={"format": "pt"})
        for n in shard_names:
            weight_map[n] = shard
            total += all_tensors[n].numel() * all_tensors[n].element_size()
    with open(os.path.join(out, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({n: describe(t) for n, t in all_tensors.items()}, f)
    print(f"wrote {len(all_tensors)} tensors to {out}")


if __name__ == "__main__":
    main()
