"""Sequence/CFG-parallel sampling over Gloo, one process per rank: every layout must give the
single-rank latents within 1e-5 relative (sp_gloo_worker checks its own rank and sets its exit
code).

FLUX (--family flux, the default): every layout of issue 7; 10x6 latents = 15 image tokens, which
needs padding for every degree > 1. Wan (--family wan): Wan2.1 T2V under U2, R2, U2R2, CFG2 and
CFG2U2, Wan2.2 A14B (both experts) under U2 and CFG2R2, TI2V (per-token timesteps) under U2R2;
9 frames at 48x80 pixels = 3 x 3 x 5 = 45 video tokens, padded for every degree > 1.

With --shard, the layouts of SHARD_LAYOUTS / WAN_SHARD_LAYOUTS run with sharded block weights
(--dit-shard-weights; groups of 2 and 4): every rank also checks that its sharded run equals the
whole-weight group's bit for bit.

Usage: sp_gloo_test.py WORKER [--family flux|wan] [--shard] [--only NAME ...]
"""
import argparse
import socket
import subprocess
import sys

# name: (cfg, ring, ulysses, latent height, latent width)
LAYOUTS = {
    "U2": (1, 1, 2, 10, 6),
    "R2": (1, 2, 1, 10, 6),
    "CFG2": (2, 1, 1, 10, 6),
    "U2R2": (1, 2, 2, 10, 6),
    "CFG2U2": (2, 1, 2, 10, 6),
    "U4": (1, 1, 4, 10, 6),
    "R4": (1, 4, 1, 10, 6),
    "U2R2CFG2": (2, 2, 2, 10, 6),
}

# name: (variant, cfg, ring, ulysses, frames, height, width)
WAN_LAYOUTS = {
    "T2V_U2": ("t2v", 1, 1, 2, 9, 48, 80),
    "T2V_R2": ("t2v", 1, 2, 1, 9, 48, 80),
    "T2V_U2R2": ("t2v", 1, 2, 2, 9, 48, 80),
    "T2V_CFG2": ("t2v", 2, 1, 1, 9, 48, 80),
    "T2V_CFG2U2": ("t2v", 2, 1, 2, 9, 48, 80),
    "A14B_U2": ("a14b", 1, 1, 2, 9, 48, 80),
    "A14B_CFG2R2": ("a14b", 2, 2, 1, 9, 48, 80),
    "TI2V_U2R2": ("ti2v", 1, 2, 2, 9, 48, 80),
}

# Sharded weights (--shard): name -> (a layout above, prefetch depth).
SHARD_LAYOUTS = {"CFG2": ("CFG2", 1), "U2R2": ("U2R2", 2)}
WAN_SHARD_LAYOUTS = {"T2V_U2": ("T2V_U2", 1), "A14B_CFG2R2": ("A14B_CFG2R2", 1)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_args(family, name, rank, address):
    if family == "wan":
        variant, cfg, ring, ulysses, frames, height, width = WAN_LAYOUTS[name]
        return cfg * ring * ulysses, ["--wan", variant, str(cfg), str(ring), str(ulysses),
                                      str(rank), address, str(frames), str(height), str(width)]
    cfg, ring, ulysses, height, width = LAYOUTS[name]
    return cfg * ring * ulysses, [str(cfg), str(ring), str(ulysses), str(rank), address,
                                  str(height), str(width)]


def run(worker, family, name, shard=None):
    address = f"127.0.0.1:{free_port()}"
    size, _ = worker_args(family, name, 0, address)
    prefix = ["--shard", str(shard)] if shard else []
    return run_ranks(name, [[worker, *prefix, *worker_args(family, name, rank, address)[1]]
                            for rank in range(size)])


def run_ranks(name, commands):
    """Starts one process per rank (commands[rank]), waits for all (240 s each at most), prints
    their output; True when every one exited 0."""
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for command in commands]
    ok = True
    for rank, p in enumerate(procs):
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            print(f"{name} rank {rank}: timed out")
        sys.stdout.write(out)
        if p.returncode != 0:
            print(f"{name} rank {rank}: exit code {p.returncode}")
            ok = False
    print(f"{name}: {'ok' if ok else 'FAILED'}")
    return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("worker")
    parser.add_argument("--family", choices=["flux", "wan"], default="flux")
    parser.add_argument("--shard", action="store_true")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    if args.shard:
        table = WAN_SHARD_LAYOUTS if args.family == "wan" else SHARD_LAYOUTS
        names = args.only or list(table)
        results = [run(args.worker, args.family, table[n][0], table[n][1]) for n in names]
        sys.exit(0 if all(results) else 1)
    names = args.only or list(WAN_LAYOUTS if args.family == "wan" else LAYOUTS)
    results = [run(args.worker, args.family, name) for name in names]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
