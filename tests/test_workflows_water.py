"""`python -m dmd_dist.workflows water-ir-classical-tiny`: classical IR refinement with a known answer at
test size (configs/tiny_water_ir_refine.toml): SPC/Fw-like water with its bond force constant 10% too stiff
and its angle force constant 10% too soft, refined on the recorded IR spectrum of the unperturbed model,
judged by independent `simulate` runs of the start, the refined and the true model."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dmd_dist import workflows
from dmd_dist.workflows.water import MODELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_water(tmp_path_factory):
    out = tmp_path_factory.mktemp("water-ir-classical-tiny")
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return out, workflows.WORKFLOWS["water-ir-classical-tiny"].run(out, env, progress=False)


def test_the_force_constants_move_toward_the_true_ones(tiny_water):
    _, res = tiny_water
    for name, p in res["parameters"].items():
        assert abs(p["refined"] - p["true"]) < abs(p["start"] - p["true"]), (name, p)


def test_the_stretch_band_moves_toward_the_true_models_by_more_than_3_standard_errors(tiny_water):
    """The O-H stretch (set by the bond force constant) moves toward the true model's peak by more than
    three combined jackknife standard errors of the start and refined peaks; the loss falls."""
    _, res = tiny_water
    move = res["band_moves"]["stretch"]
    assert move["moved"] > 3 * move["stderr"], res["bands"]
    assert res["refinement"]["loss_last"] < res["refinement"]["loss_first"]


def test_the_start_is_perturbed_where_the_physics_says(tiny_water):
    """A stiffer bond puts the stretch above the true model's, a softer angle the bend below."""
    _, res = tiny_water
    b = res["bands"]
    assert b["start"]["stretch"]["value"] - b["true"]["stretch"]["value"] > 3 * np.hypot(
        b["start"]["stretch"]["stderr"], b["true"]["stretch"]["stderr"])
    assert b["start"]["bend"]["value"] < b["true"]["bend"]["value"]


def test_results_table_figures_and_commands_are_written(tiny_water):
    out, res = tiny_water
    assert json.loads((out / "results.json").read_text())["bands"] == res["bands"]
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in MODELS) and "| bond.k |" in table and "dmd-dist train" in table
    assert all((out / f).stat().st_size > 1000 for f in res["figures"])
    # In the order started: the start and true models' runs need nothing, so they run beside the refinement.
    assert [c.split()[1] for c in res["commands"]] == ["train", "simulate", "simulate", "simulate", "plot"]
