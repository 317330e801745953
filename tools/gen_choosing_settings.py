#!/usr/bin/env python3
"""Writes docs/choosing-settings.md from `dgrid plan`'s own output (issue #20 item 5).

For each case (model, GPUs, budget) it runs `dgrid plan --json` on a topology written here and
renders the planner's DiT-settings candidates: predicted step time and peak per rank, the one
chosen and why each other was not. Nothing in the page is typed by hand but the case list and the
wording around the tables, so the page stays what the planner says; the ctest choosing_settings_doc
runs this with --check and fails when the committed page differs.

  tools/gen_choosing_settings.py --plan-command "build/cli/dgrid plan" [--out docs/choosing-settings.md]
  tools/gen_choosing_settings.py --plan-command build/cli/dgrid-plan --check docs/choosing-settings.md
"""

import argparse
import difflib
import json
import os
import shlex
import subprocess
import sys
import tempfile

H100 = "NVIDIA H100 80GB HBM3"

# (title, model, GPUs of one node, --vram-budget or None: the GPU's own 80 GB)
CASES = [
    ("FLUX.1-dev, one GPU with a 24 GiB budget", "flux-dev", 1, "24GiB"),
    ("FLUX.1-dev, one 80 GB GPU", "flux-dev", 1, None),
    ("FLUX.1-dev, 4 x 80 GB GPUs (NVLink)", "flux-dev", 4, None),
    ("Wan2.1-14B, one GPU with a 24 GiB budget", "wan2.1-14b", 1, "24GiB"),
    ("Wan2.1-14B, one 80 GB GPU", "wan2.1-14b", 1, None),
    ("Wan2.1-14B, 4 x 80 GB GPUs (NVLink)", "wan2.1-14b", 4, None),
    ("FLUX.1-dev, 4 GPUs (NVLink) with a 12 GiB budget", "flux-dev", 4, "12GiB"),
    ("Wan2.1-14B, 4 GPUs (NVLink) with a 16 GiB budget", "wan2.1-14b", 4, "16GiB"),
]


def topology(gpus):
    """One node of `gpus` H100 80GB cards, all NVLink peers (the planner's JSON form)."""
    return {
        "nodes": [{
            "name": "node0",
            "gpus": [{"index": i, "name": H100, "memory_gb": 80, "numa_node": 0,
                      "nvlink_peers": [j for j in range(gpus) if j != i]} for i in range(gpus)],
        }]
    }


def run_plan(plan_command, model, gpus, budget, work):
    topo = os.path.join(work, f"h100x{gpus}.json")
    with open(topo, "w") as f:
        json.dump(topology(gpus), f)
    out = os.path.join(work, "plan.json")
    args = ["--topology", topo, "--model", model, "--json", out]
    if budget:
        args += ["--vram-budget", budget]
    proc = subprocess.run(shlex.split(plan_command) + args, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"dgrid plan {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    with open(out) as f:
        return json.load(f), args


def gib(mib):
    return f"{mib / 1024:.1f} GiB"


def render_case(title, model, gpus, budget, plan, args):
    memory = plan["memory"]
    lines = [f"## {title}", ""]
    shown = ["dgrid", "plan", "--topology", f"<{gpus} x H100 80GB>", "--model", model]
    if budget:
        shown += ["--vram-budget", budget]
    lines.append(f"`{' '.join(shown)}`, the model's default request mix.")
    lines.append("")
    flags = memory.get("denoiser_flags", []) + memory.get("stage_flags", [])
    lines.append(f"**Chosen: {chosen_name(memory)}** ("
                 + (f"`{' '.join(flags)}`" if flags else "the denoisers' defaults") + "); groups: "
                 + ", ".join(f"{g['group']} {g['layout']}" for g in memory["groups"]) + ".")
    lines.append("")
    stages = plan.get("stages", {})
    for name in ("encoder", "decoder"):
        if name in stages:
            st = stages[name]
            lines.append(f"- {name} stage: {st['detail']}: weights {gib(st['weights_mib'])}, "
                         f"activations {gib(st['activations_mib'])}, peak {gib(st['peak_mib'])}")
    if stages.get("shared_gpu"):
        lines.append("- one GPU: the stages share it with the denoiser, so the peaks below are the GPU's "
                     "(every weight resident, the largest stage's activations; bf16 + model "
                     "offload: every component's weights there only during its use, so the "
                     "largest use)")
    lines.append("")
    seen = set()
    for g in memory["groups"]:
        key = (g["layout"], round(g.get("budget_mib", 0)))
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"Per rank of {g['layout']}, budget {gib(g['budget_mib'])} less "
                     f"{gib(memory['context_reserve_mib'])} for the CUDA context:")
        lines.append("")
        lines.append("| candidate | predicted step (ms) | predicted peak | pinned host | verdict |")
        lines.append("|---|---:|---:|---:|---|")
        for c in g["candidates"]:
            if not c["available"]:
                lines.append(f"| {c['name']} | - | - | - | {c['verdict']} |")
                continue
            host = gib(c["host_mib"]) if c["host_mib"] > 0 else "-"
            name = f"**{c['name']}**" if c["chosen"] else c["name"]
            lines.append(f"| {name} | {c['predicted_step_ms']:.0f} | "
                         f"{gib(c['predicted_peak_mib'])} | {host} | {c['verdict']} |")
        lines.append("")
    return lines


def chosen_name(memory):
    for g in memory["groups"]:
        for c in g["candidates"]:
            if c["chosen"] and c["dit_offload"] == memory["dit_offload"] and \
                    c["dit_precision"] == memory["dit_precision"] and \
                    c.get("dit_offload_prefetch", 0) == memory["dit_offload_prefetch"] and \
                    c.get("dit_shard_prefetch", 0) == memory["dit_shard_prefetch"]:
                return c["name"]
    return "?"


def render(plan_command):
    with tempfile.TemporaryDirectory(prefix="dgrid-choosing-") as work:
        cases = [(title, model, gpus, budget) + run_plan(plan_command, model, gpus, budget, work)
                 for title, model, gpus, budget in CASES]
    first = cases[0][4]
    lines = [
        "# Which settings for which model and GPU",
        "",
        "<!-- Generated by tools/gen_choosing_settings.py from `dgrid plan --json`; do not edit by",
        "     hand: ctest choosing_settings_doc fails when this page and the planner disagree. -->",
        "",
        "`dgrid plan --vram-budget B [--performance-mode auto|speed|memory]` (and `dgrid up` with",
        "the same flags) chooses how each denoiser rank holds the DiT: every weight on the GPU in",
        "bf16; bf16 with layerwise offload (`--dit-offload layerwise --dit-offload-prefetch N`: the",
        "blocks in pinned host memory, N + 1 on the GPU at once, outputs identical); on one GPU",
        "shared with the text encoders and the VAE (`dgrid generate --local`), bf16 with model",
        "offload of every component (`--dit-offload model --text-encoder-device offload",
        "--vae-device offload`: each component's weights copied in from pinned host memory for its",
        "use only, the DiT's once per request; outputs identical); FP8 (FLUX only,",
        "lossy); sharded weights on a group of 2 or more GPUs (`--dit-shard-weights",
        "--dit-shard-prefetch N`: each of the group's ranks keeps 1/size of every block and the",
        "group all-gathers a block before it runs, N + 1 gathered at once, outputs identical).",
        "`auto` takes the fastest lossless candidate that fits (at equal speed, within 2%, every",
        "weight on the GPU first), FP8 only when nothing lossless does; `speed` the fastest that",
        "fits, FP8 included; `memory` the smallest peak.",
        "",
        "**Every number below is a prediction**, for the largest request of the model's default",
        "mix (FLUX.1-dev: 512², 1024², 2048², half with true CFG; Wan2.1-14B: 832x480 and",
        "1280x720, 81 frames, CFG), with the step time share-weighted over the mix. The models were",
        "fitted to measured rows:",
        "",
        f"- peak memory: {first['memory']['source']} (cards: H100 80GB HBM3, H200 x4); the offload",
        "  peaks were not fitted to but checked: 2026-12-07-h100-55379e5-offload-run-offload-*",
        "  (H100 80GB HBM3, FLUX.1-dev shape), within 1% (tests/unit/planner/memory_model_test.cc);",
        f"- step time: {first['calibration']['source']}: "
        f"{first['calibration']['overhead_ms']:.1f} ms + FLOPs / "
        f"{first['calibration']['rate_tflops']:.0f} TFLOP/s;",
        f"- offload copies: {first['memory']['host_to_device_gbps']:.1f} GB/s host-to-device, "
        f"{first['memory']['host_to_device_source']};",
        "- encoder and decoder stages (text encoders, VAE decode of the mix's largest output with",
        "  `--vae-tiling auto`, bf16): not measured on a GPU (no committed report has a text",
        "  encoder or VAE peak); weights from the released configs' parameter counts, the decode's",
        "  live tensors counted from the decoder's code and, for FLUX's AutoencoderKL, checked",
        "  against the CPU allocator's peak of the tiny pipeline's decode (planner/stage_memory.h,",
        "  docs/placement.md);",
        "- sharded weights: not measured yet. The peak is counted from the parameter counts (the",
        "  weights outside the blocks, 1/size of every block padded to a multiple of size",
        "  elements, and N + 1 gathered blocks); the step adds each forward's all-gathers",
        "  (size - 1)/size of the blocks' bytes over the link spanning the group (NVLink 450 GB/s,",
        "  PCIe 50 GB/s by default) plus a collective latency per block, serially: the denoiser",
        "  does not overlap its gathers with compute yet (planner/cost_model.h).",
        "",
        "The 24 GiB cases are an H100 held to a 24 GiB budget: the peaks carry over to a 24 GiB card,",
        "the step times do not (an L4 or RTX 4090 computes and copies slower; PCIe Gen4 cards get",
        "half the copy bandwidth by default, an assumption). Wan's offloaded peaks are checked",
        "against 2026-12-07-h100-db21085-wan-*-offload-* (H100 80GB HBM3, Wan2.1-14B shape at",
        "832x480x81, tests/unit/planner/memory_model_test.cc); those runs measured its copies",
        "hidden behind its steps (+0.6% step time at prefetch 1, docs/performance.md).",
        "",
    ]
    for title, model, gpus, budget, plan, args in cases:
        lines += render_case(title, model, gpus, budget, plan, args)
    return "\n".join(lines).rstrip() + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan-command", required=True,
                        help='how to run dgrid plan, e.g. "build/cli/dgrid plan"')
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", default="docs/choosing-settings.md")
    group.add_argument("--check", help="compare with this file instead of writing it")
    args = parser.parse_args()
    page = render(args.plan_command)
    if args.check:
        with open(args.check) as f:
            committed = f.read()
        if committed != page:
            sys.stdout.writelines(difflib.unified_diff(
                committed.splitlines(True), page.splitlines(True), args.check, "generated"))
            sys.exit(f"{args.check} is out of date: run tools/gen_choosing_settings.py "
                     f"--plan-command ... --out {args.check}")
        print(f"{args.check} matches the planner's output")
        return
    with open(args.out, "w") as f:
        f.write(page)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
