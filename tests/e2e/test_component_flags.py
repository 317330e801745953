"""`dgrid up` with the text encoders and the VAE in another precision than the DiT
(--text-encoder-precision, --vae-precision; common/component_flags.h): the cluster's image equals
`dgrid generate --local` with the same flags byte for byte, and differs from the all-float32 one,
so the encoder and decoder processes really ran in the precision asked for.

Model offload (--text-encoder-device offload, --vae-device offload; common/model_offload.h): on
the CPU the weights are copied CPU to CPU around each use, so the cluster's image, --local's with
the same flags and the plain --local one are the same bytes; the encoder and decoder processes say
in their logs that they offload; a bad device value is refused naming its flag.

The DiT's model offload (--dit-offload model; services/denoiser/dit_placement.h), passed on by
`dgrid up` to its denoisers: the cluster's image and --local's with every component offloaded are
the plain placement's bytes; the denoiser says it offloads; a prefetch depth given with it is
refused naming the flag."""
import os
import re
import subprocess
import tempfile

from conftest import DGRID, Cluster, tiny_model

FLAGS = ["--text-encoder-precision", "bf16", "--vae-precision", "bfloat16"]
ARGS = ["--seed", "5", "--width", "64", "--height", "64", "--steps", "4",
        "a red circle on a blue background"]


def generate(*flags):
    out = os.path.join(tempfile.mkdtemp(), "out.png")
    subprocess.run([DGRID, "generate", *flags, *ARGS, "-o", out], check=True, capture_output=True)
    with open(out, "rb") as f:
        return f.read()


def test_component_precisions_in_a_cluster_equal_local_with_the_same_flags():
    model = tiny_model()
    cluster = Cluster(model, extra=FLAGS)
    try:
        remote = generate("--server", cluster.grpc_address)
    finally:
        cluster.stop()
    mixed = generate("--local", "--model", model, *FLAGS)
    plain = generate("--local", "--model", model)
    assert remote == mixed
    assert mixed != plain


OFFLOAD = ["--text-encoder-device", "offload", "--vae-device", "offload"]


def test_offloaded_components_in_a_cluster_and_local_equal_the_plain_placement():
    model = tiny_model()
    cluster = Cluster(model, extra=OFFLOAD)
    try:
        remote = generate("--server", cluster.grpc_address)
        encoder_log = cluster.log("encoder-0")
        decoder_log = cluster.log("decoder-0")
    finally:
        cluster.stop()
    assert re.search(r"model offload: text_encoder: .* copied to cpu around each use", encoder_log)
    assert re.search(r"model offload: text_encoder_2: ", encoder_log)
    assert re.search(r"model offload: vae: .* copied to cpu around each use", decoder_log)
    offloaded = generate("--local", "--model", model, *OFFLOAD)
    plain = generate("--local", "--model", model)
    assert remote == offloaded
    assert offloaded == plain


def test_a_bad_component_device_is_refused_naming_its_flag():
    for flag in ("--text-encoder-device", "--vae-device"):
        out = subprocess.run([DGRID, "generate", "--local", "--model", tiny_model(), flag,
                              "offloaded", *ARGS], capture_output=True, text=True)
        assert out.returncode != 0
        assert f"{flag}: 'offloaded' must be cpu, cuda, cuda:N or offload" in out.stderr, out.stderr


def test_dit_model_offload_in_a_cluster_and_local_equals_the_plain_placement():
    model = tiny_model()
    cluster = Cluster(model, extra=["--dit-offload", "model"])
    try:
        remote = generate("--server", cluster.grpc_address)
        denoiser_log = cluster.log("denoiser-0")
    finally:
        cluster.stop()
    assert re.search(r"--dit-offload model: transformer: .* copied to cpu around each use",
                     denoiser_log), denoiser_log[-2000:]
    offloaded = generate("--local", "--model", model, "--dit-offload", "model", *OFFLOAD)
    plain = generate("--local", "--model", model)
    assert remote == plain
    assert offloaded == plain


def test_a_prefetch_with_dit_model_offload_is_refused_naming_its_flag():
    out = subprocess.run([DGRID, "generate", "--local", "--model", tiny_model(), "--dit-offload",
                          "model", "--dit-offload-prefetch", "2", *ARGS],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "--dit-offload-prefetch: only with --dit-offload layerwise" in out.stderr, out.stderr
