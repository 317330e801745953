"""Sequence/CFG-parallel FLUX over Gloo, one process per rank: every layout of issue 7 must give the
single-rank latents within 1e-5 relative (sp_gloo_worker checks its own rank and sets its exit
code). 10x6 latents = 15 image tokens, which needs padding for every degree > 1.

Usage: sp_gloo_test.py WORKER [--only NAME ...]
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(worker, name):
    cfg, ring, ulysses, height, width = LAYOUTS[name]
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen([worker, str(cfg), str(ring), str(ulysses), str(rank), address,
                          str(height), str(width)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(cfg * ring * ulysses)
    ]
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
    parser.add_argument("--only", nargs="*", default=list(LAYOUTS))
    args = parser.parse_args()
    results = [run(args.worker, name) for name in args.only]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
