"""A dgrid-denoiser started with --vram-budget checks, before it loads anything, that one rank of
its model fits the budget with the DiT flags it was given (services/denoiser/server/vram_budget.h):
a model that does not fit ends the process with a message saying what would, and one that fits
goes on to load. The model here is the tiny pipeline with a FLUX.1-dev-shaped transformer config
and no transformer weights: the check reads only the config, and the load that follows fails."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import BUILD, tiny_model

DENOISER = os.path.join(BUILD, "services", "denoiser", "dgrid-denoiser")
FLUX_DEV = {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
            "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "out_channels": None, "patch_size": 1,
            "pooled_projection_dim": 768}


@pytest.fixture(scope="module")
def flux_dev_shaped(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("budget") / "flux-dev-shaped")
    shutil.copytree(tiny_model(), path)
    transformer = os.path.join(path, "transformer")
    for name in os.listdir(transformer):
        os.remove(os.path.join(transformer, name))
    with open(os.path.join(transformer, "config.json"), "w") as f:
        json.dump(FLUX_DEV, f)
    return path


def run(model, *flags):
    return subprocess.run([DENOISER, "--model", model, "--port", "0", "--log-level", "info",
                           *flags], capture_output=True, text=True, timeout=120)


def test_a_model_over_the_budget_exits_saying_what_would_fit(flux_dev_shaped):
    r = run(flux_dev_shaped, "--vram-budget", "20GiB")
    assert r.returncode == 1, r.stderr
    assert "RESOURCE_EXHAUSTED" in r.stderr, r.stderr
    assert "--vram-budget 20GiB" in r.stderr and "does not fit" in r.stderr, r.stderr
    # bf16 with every weight on the GPU (~22 GiB at the largest request, 512x512 for the tiny
    # pipeline's limits) does not fit 20 GiB; layerwise offload does.
    assert "would fit" in r.stderr and "--dit-offload layerwise" in r.stderr, r.stderr
    assert "listening on" not in r.stderr  # nothing started


def test_the_settings_that_fit_pass_the_check_and_go_on_to_load(flux_dev_shaped):
    r = run(flux_dev_shaped, "--vram-budget", "20GiB", "--dit-offload", "layerwise")
    # The check passed (logged), then the load failed: this folder has no transformer weights.
    assert r.returncode == 1
    assert "does not fit" not in r.stderr, r.stderr
    assert "fits (predicted peak" in r.stderr, r.stderr
    assert "listening on" in r.stderr, r.stderr


def test_a_malformed_budget_names_the_flag(flux_dev_shaped):
    r = run(flux_dev_shaped, "--vram-budget", "lots")
    assert r.returncode == 1
    assert "INVALID_ARGUMENT" in r.stderr and "--vram-budget" in r.stderr, r.stderr


def test_sharded_weights_are_checked_with_the_planners_formula(flux_dev_shaped):
    # Rank 0 of a Ulysses-4 group with --dit-shard-weights: per rank the weights outside the
    # blocks, a quarter of the 22 GiB of blocks and two gathered joint blocks (about 7 GiB), more
    # than 6 GiB less the CUDA context's allowance. Checked before the group forms or anything
    # loads; layerwise offload would fit.
    r = run(flux_dev_shaped, "--ulysses", "4", "--rank", "0", "--leader-address", "127.0.0.1:1",
            "--dit-shard-weights=true", "--vram-budget", "6GiB")
    assert r.returncode == 1, r.stderr
    assert "RESOURCE_EXHAUSTED" in r.stderr, r.stderr
    assert "--dit-shard-weights --dit-shard-prefetch 1 does not fit" in r.stderr, r.stderr
    assert "cfg1-ring1-ulysses4" in r.stderr, r.stderr
    assert "sharded weights prefetch 1" in r.stderr, r.stderr  # listed among the candidates
    assert "would fit" in r.stderr and "--dit-offload layerwise" in r.stderr, r.stderr
    assert "listening on" not in r.stderr
