"""`python -m dmd_dist.workflows`: the argon ML workflow end to end at test size (configs/tiny_argon_mpnn_refine.toml):
pre-train the MPNN on teacher A, refine it by DMD on teacher B's diffusion coefficient, evaluate both
models and both teachers by independent `simulate` runs, and compare forces."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from dmd_dist import workflows
from dmd_dist.workflows.argon import MODELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_argon(tmp_path_factory):
    out = tmp_path_factory.mktemp("argon-mpnn-tiny")
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    results = workflows.WORKFLOWS["argon-mpnn-tiny"].run(out, env, progress=False)
    return out, results


def test_refinement_moves_the_mpnn_diffusion_toward_teacher_b(tiny_argon):
    """Judged by independent simulate runs, not by the training iterations: D of the refined network lies
    closer to the target than the pre-trained one's, by more than three combined standard errors, so the
    training loss evaluated on them falls."""
    _, res = tiny_argon
    target = res["target"]["value"]
    pre, ref = res["diffusion"]["pre-trained"], res["diffusion"]["refined"]
    moved = abs(pre["value"] - target) - abs(ref["value"] - target)
    assert moved > 3 * np.hypot(pre["stderr"], ref["stderr"]), res["diffusion"]
    assert (ref["value"] - target) ** 2 < (pre["value"] - target) ** 2


def test_the_target_is_teacher_b_and_the_teachers_differ(tiny_argon):
    _, res = tiny_argon
    a, b = res["diffusion"]["teacher A"], res["diffusion"]["teacher B"]
    assert abs(b["value"] - res["target"]["value"]) < 3 * b["stderr"]  # the config records teacher B's D
    assert a["value"] - b["value"] > 3 * np.hypot(a["stderr"], b["stderr"])


def test_forces_are_reported_against_both_teachers(tiny_argon):
    """The pre-trained network is fitted to teacher A: its forces are closer to A's than to B's, and well
    below the teachers' own force scale.  The refined network's errors are reported whatever they are."""
    _, res = tiny_argon
    for frames, rows in res["force_rmse"].items():
        assert rows["teacher A"]["vs teacher A"] == 0.0 and rows["teacher B"]["vs teacher B"] == 0.0
        assert rows["pre-trained"]["vs teacher A"] < rows["pre-trained"]["vs teacher B"]
        assert rows["pre-trained"]["vs teacher A"] < 0.3 * rows["teacher force RMS"]
        assert all(np.isfinite(v) for m in MODELS for v in rows[m].values())


def test_results_table_figures_and_commands_are_written(tiny_argon):
    out, res = tiny_argon
    assert json.loads((out / "results.json").read_text())["diffusion"] == res["diffusion"]
    table = (out / "results.md").read_text()
    assert all(m in table for m in MODELS) and "dmd-dist train" in table
    assert all((out / f).stat().st_size > 1000 for f in res["figures"])
    assert res["commands"][0].startswith("dmd-dist pretrain")
    assert res["refinement"]["iterations"] == 5


def test_a_rerun_skips_every_finished_step(tiny_argon):
    """The workflow continues where it stopped: on a finished output directory nothing runs again."""
    out, res = tiny_argon
    import logging

    records, logger = [], logging.getLogger("dmd_dist")
    handler, level = logging.Handler(), logger.level
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        again = workflows.WORKFLOWS["argon-mpnn-tiny"].run(out, dict(os.environ), False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any(r.getMessage().startswith("skip (done): dmd-dist simulate") for r in records)
    assert not [r for r in records if r.getMessage().startswith("run:")]
    assert again["diffusion"] == res["diffusion"]


def test_the_module_runs_as_a_command_and_refuses_unknown_workflows():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "dmd_dist.workflows", "argon-nope"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert r.returncode == 2 and "invalid choice: 'argon-nope'" in r.stderr
