"""VAE tiling flags end to end (#20 item 3): `dgrid generate --local --vae-tiling/--vae-tile-size`
and `dgrid up` passing them to its decoders. The tiled decode itself is checked against
diffusers' in tests/unit/decoder/vae_tiling_test.cc; here: the default (auto) leaves a picture
byte for byte as with tiling off, tiling on changes it (tiles do not see each other), a cluster
started with tiling on answers the same bytes as --local with the same flags, and bad values are
refused naming the flag (by `dgrid up` before it starts anything)."""
import os
import subprocess
import tempfile

from conftest import DGRID, Cluster

PROMPT = "a red circle on a blue background"
# 128 x 96 pixels: 16 x 12 latents of the tiny pipeline's VAE (8 pixels per latent), so 32 px tiles
# (its sample_size) make a grid of 4 x 3 overlapping tiles.
SIZE = ["--width", "128", "--height", "96", "--steps", "2", "--seed", "5"]
TILED = ["--vae-tiling", "on", "--vae-tile-size", "32"]


def generate(*args):
    out = os.path.join(tempfile.mkdtemp(), "out.png")
    subprocess.run([DGRID, "generate", *SIZE, "-o", out, *args, PROMPT], check=True,
                   capture_output=True)
    with open(out, "rb") as f:
        return f.read()


def test_local_tiling_flags(model):
    auto = generate("--local", "--model", model)
    assert generate("--local", "--model", model, "--vae-tiling", "off") == auto
    tiled = generate("--local", "--model", model, *TILED)
    assert tiled != auto
    # One tile as large as the picture: not tiled, as diffusers decides.
    assert generate("--local", "--model", model, "--vae-tiling", "on", "--vae-tile-size",
                    "128") == auto

    for bad, flag in ((["--vae-tiling", "sometimes"], "--vae-tiling"),
                      (["--vae-tiling", "on", "--vae-tile-size", "40"], "--vae-tile-size")):
        run = subprocess.run([DGRID, "generate", "--local", "--model", model, *SIZE, *bad, "-o",
                              os.path.join(tempfile.mkdtemp(), "x.png"), PROMPT],
                             capture_output=True, text=True)
        assert run.returncode != 0
        assert flag in run.stderr, run.stderr


def test_cluster_decoder_tiles_as_local(model):
    cluster = Cluster(model, extra=TILED)
    try:
        remote = generate("--server", cluster.grpc_address)
        assert "VAE tiling on (tiles of 32 px)" in cluster.log("decoder-0")
    finally:
        cluster.stop()
    assert remote == generate("--local", "--model", model, *TILED)


def test_up_refuses_bad_tiling_before_starting(model):
    run = subprocess.run([DGRID, "up", "--model", model, "--port", "0", "--http-port", "0",
                          "--vae-tiling", "always"], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "--vae-tiling" in run.stdout + run.stderr
