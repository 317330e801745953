"""dgrid's embedded default model (models/dgrid-shapes) and its shape/colour checker.

  * the checker reads the data set generator's own pictures back (its ground truth);
  * the held-out captions are wordings the training templates never produce;
  * the committed folder is small, half precision, and what `dgrid generate --local` uses by default;
  * the acceptance test: 50 held-out captions, fixed seeds, through `dgrid generate --local`, graded
    by the checker (colour >= 90%, shape >= 80%). It is its own ctest (default_model_acceptance).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

SOURCE = os.environ.get("DGRID_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("DGRID_BUILD_DIR") or os.path.join(SOURCE, "build")
sys.path.insert(0, os.path.join(SOURCE, "tools", "train_default_model"))
import checker  # noqa: E402
import shapes  # noqa: E402

DGRID = os.path.join(BUILD, "cli", "dgrid")
MODEL = os.path.join(SOURCE, "models", "dgrid-shapes")


def read_png(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def test_checker_reads_the_generators_ground_truth():
    rng = np.random.default_rng(11)
    n, colour_ok, shape_ok = 300, 0, 0
    for _ in range(n):
        scene = shapes.sample_scene(rng, two_shapes_p=0.0)
        got = checker.check(shapes.render(scene))
        want = scene["shapes"][0]
        colour_ok += got["colour"] == want["colour"]
        shape_ok += got["shape"] == want["shape"]
        assert sorted(got["background"]) == sorted(scene["background"])
    assert colour_ok / n >= 0.99 and shape_ok / n >= 0.99, (colour_ok, shape_ok)


def test_checker_finds_nothing_on_a_plain_picture():
    plain = np.full((64, 64, 3), shapes.COLOURS["blue"], np.uint8)
    assert checker.check(plain)["shape"] is None


def form(caption):
    """The caption with colour and shape names replaced by placeholders: its wording."""
    words = []
    for w in caption.replace(",", " ,").replace(".", " .").split():
        words.append("C" if w in shapes.COLOURS else "S" if w in shapes.SHAPES else w)
    return " ".join(words)


def test_held_out_captions_are_not_template_wordings():
    held = shapes.held_out()
    assert len(held) == 50 and len({h[0] for h in held}) == 50
    assert {h[1] for h in held} == set(shapes.SHAPES)
    training_forms = {form(c) for c in shapes.corpus(40000, seed=3)}
    assert len(training_forms) > 1000  # the templates' wordings, with sizes and positions
    assert not [h[0] for h in held if form(h[0]) in training_forms]


def safetensors_dtypes(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_committed_model_is_small_half_precision_diffusers_layout():
    with open(os.path.join(MODEL, "model_index.json")) as f:
        assert json.load(f)["_class_name"] == "FluxPipeline"
    total = 0
    for folder, _, files in os.walk(MODEL):
        for name in files:
            path = os.path.join(folder, name)
            total += os.path.getsize(path)
            if name.endswith(".safetensors"):
                assert safetensors_dtypes(path) <= {"F16", "BF16"}, path
    assert total <= 25 * 2**20, total
    for path in ("tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer_2/spiece.model",
                 "dgrid.json", "scheduler/scheduler_config.json"):
        assert os.path.exists(os.path.join(MODEL, path)), path


def generate(prompt, seed, out, model=None, extra=()):
    cmd = [DGRID, "generate", "--local", "--seed", str(seed), "-o", out, *extra, prompt]
    if model:
        cmd[3:3] = ["--model", model]
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def test_dgrid_generate_local_uses_the_committed_model_by_default():
    env_model = os.environ.pop("DGRID_MODEL", None)
    try:
        out = os.path.join(tempfile.mkdtemp(), "default.png")
        run = generate("a green triangle on a white background", 1, out)
    finally:
        if env_model is not None:
            os.environ["DGRID_MODEL"] = env_model
    assert os.path.realpath(MODEL) in os.path.realpath(run.stderr.split("loaded ")[1].split()[0])
    assert read_png(out).shape == (64, 64, 3)


def test_held_out_captions_colour_and_shape():
    work = tempfile.mkdtemp()
    rows, colour_ok, shape_ok = [], 0, 0
    for i, (caption, shape, colour, _) in enumerate(shapes.held_out()):
        out = os.path.join(work, f"{i}.png")
        generate(caption, i, out, model=MODEL)
        got = checker.check(read_png(out))
        colour_ok += got["colour"] == colour
        shape_ok += got["shape"] == shape
        rows.append((caption, colour, shape, got["colour"], got["shape"]))
    n = len(rows)
    report = f"colour {colour_ok}/{n}, shape {shape_ok}/{n}; misses: " + "; ".join(
        f"{r[0]!r} -> {r[3]} {r[4]}" for r in rows if r[1:3] != r[3:5])
    print(report)
    assert colour_ok >= 0.9 * n and shape_ok >= 0.8 * n, report
