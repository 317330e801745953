"""The parallel VAE decode over Gloo, one process per rank: each rank of parallel_vae_gloo_worker
decodes the same seeded latents alone and with the group and checks the two within 1e-5 (max abs;
its exit code). Even and uneven row splits on the tiny VAEs of make_vae_fixtures.py.

Usage: parallel_vae_gloo_test.py WORKER
"""
import os
import socket
import subprocess
import sys

# (fixture VAE, ranks, latent height, latent width)
CASES = [("vae_flux", 2, 8, 6), ("vae_flux", 2, 7, 5), ("vae_quant", 2, 5, 4)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(worker, vae, ranks, height, width):
    folder = os.path.join(os.environ["DGRID_BUILD_DIR"], "parity", "decoder", vae)
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([worker, folder, str(rank), str(ranks), address, str(height),
                               str(width)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for rank in range(ranks)]
    ok = True
    for rank, p in enumerate(procs):
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            print(f"rank {rank}: timed out")
        sys.stdout.write(out)
        ok = ok and p.returncode == 0
    print(f"{vae} {ranks} ranks {height}x{width}: {'ok' if ok else 'FAILED'}")
    return ok


def main():
    results = [run(sys.argv[1], *case) for case in CASES]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
