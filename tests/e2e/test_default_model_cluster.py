"""The embedded default model (models/dgrid-shapes, float16 weights) served by a `dgrid up` cluster
started without --model: its picture equals `dgrid generate --local`'s byte for byte."""
import os
import subprocess
import tempfile

import pytest

from conftest import DGRID, SOURCE, Cluster

MODEL = os.path.join(SOURCE, "models", "dgrid-shapes")
PROMPT = "a green triangle on a white background"


@pytest.fixture(scope="module")
def default_cluster():
    if not os.path.exists(os.path.join(MODEL, "model_index.json")):
        pytest.skip("models/dgrid-shapes is not in this checkout")
    env_model = os.environ.pop("DGRID_MODEL", None)
    # "--model" "" makes `dgrid up` pick its default model, as a bare `dgrid up` does.
    c = Cluster("", decoders=1)
    if env_model is not None:
        os.environ["DGRID_MODEL"] = env_model
    yield c
    c.stop()


def test_default_model_cluster_equals_single_process_byte_for_byte(default_cluster):
    from dgrid_client import Client
    with Client(default_cluster.grpc_address) as client:
        # No size or steps: the model's defaults (dgrid.json) on both sides.
        remote = client.generate(PROMPT, seed=42).image.data
    out = os.path.join(tempfile.mkdtemp(), "local.png")
    subprocess.run([DGRID, "generate", "--local", "--seed", "42", "-o", out, PROMPT], check=True,
                   capture_output=True)
    with open(out, "rb") as f:
        assert remote == f.read()
    models = subprocess.run([DGRID, "models", "--server", default_cluster.grpc_address],
                            check=True, capture_output=True, text=True).stdout
    assert "dgrid-shapes" in models


def test_held_out_captions_through_the_cluster(default_cluster):
    """The acceptance grading of tests/model (50 held-out captions, seeds 0-49, colour >= 90%,
    shape >= 80%), here through the cluster's gRPC API instead of `dgrid generate --local`."""
    import io
    import sys

    import numpy as np
    from PIL import Image

    from dgrid_client import Client
    sys.path.insert(0, os.path.join(SOURCE, "tools", "train_default_model"))
    import checker
    import shapes
    colour_ok = shape_ok = n = 0
    misses = []
    with Client(default_cluster.grpc_address) as client:
        for i, (caption, shape, colour, _) in enumerate(shapes.held_out()):
            png = client.generate(caption, seed=i).image.data
            got = checker.check(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
            n += 1
            colour_ok += got["colour"] == colour
            shape_ok += got["shape"] == shape
            if (got["colour"], got["shape"]) != (colour, shape):
                misses.append(f"{caption!r} -> {got['colour']} {got['shape']}")
    report = f"colour {colour_ok}/{n}, shape {shape_ok}/{n}; misses: " + "; ".join(misses)
    print(report)
    assert colour_ok >= 0.9 * n and shape_ok >= 0.8 * n, report
