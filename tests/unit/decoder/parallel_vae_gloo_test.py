"""The parallel VAE decode over Gloo, one process per rank: each rank of parallel_vae_gloo_worker
decodes the same seeded latents alone and with the group and checks the two within 1e-5 (max abs;
its exit code). Even and uneven row splits on the tiny VAEs of make_vae_fixtures.py, and Wan's
(Wan2.1 layout) of make_vae_tiling_fixtures.py.

Usage: parallel_vae_gloo_test.py WORKER
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
from sp_gloo_test import free_port, run_ranks  # noqa: E402  (one process per rank)

# (fixture folder, ranks, latent height, latent width, latent frames: Wan's VAE when given)
CASES = [("decoder/vae_flux", 2, 8, 6), ("decoder/vae_flux", 2, 7, 5),
         ("decoder/vae_quant", 2, 5, 4), ("decoder_tiling/tiling_wan", 2, 5, 4, 2)]


def run(worker, vae, ranks, height, width, *frames):
    folder = os.path.join(os.environ["DGRID_BUILD_DIR"], "parity", vae)
    address = f"127.0.0.1:{free_port()}"
    return run_ranks(f"{vae} {ranks} ranks {height}x{width}",
                     [[worker, folder, str(rank), str(ranks), address, str(height), str(width),
                       *map(str, frames)] for rank in range(ranks)])


def main():
    results = [run(sys.argv[1], *case) for case in CASES]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
