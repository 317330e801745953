"""`dgrid up` with the text encoders and the VAE in another precision than the DiT
(--text-encoder-precision, --vae-precision; common/component_flags.h): the cluster's image equals
`dgrid generate --local` with the same flags byte for byte, and differs from the all-float32 one,
so the encoder and decoder processes really ran in the precision asked for."""
import os
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
