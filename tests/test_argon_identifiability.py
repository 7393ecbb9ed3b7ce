"""benchmarks/argon_identifiability.py's criteria on synthetic runs with known answers: a run whose
parameters stopped moving is "settled"; it is "converged" only if its iterations' D also sits within two
standard errors of the config's target (docs/gradient_accuracy.md: a run whose rates decayed too early
settles off its target)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("argon_identifiability", ROOT / "benchmarks/argon_identifiability.py")
ident = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ident)

TEACHER = {"lj.sigma": 0.340, "lj.epsilon": 0.996}


def fake_run(path, epsilon, diffusion):
    """A train directory: the main job's config (target D 2.36e-3) and one metrics row per iteration."""
    path.mkdir()
    (path / "config.toml").write_text((ROOT / "configs/argon_train_quick.toml").read_text())
    rows = [{"iteration": i + 1, "params": {"lj.sigma": 0.34, "lj.epsilon": e}, "observables": {"diffusion": d}}
            for i, (e, d) in enumerate(zip(epsilon, diffusion))]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_settled_and_converged_are_told_apart(tmp_path):
    noise = 0.05e-3 * np.tile([1.0, -1.0], 10)  # iteration D scatter, standard error of a 10-mean ~1.7e-5
    moving = fake_run(tmp_path / "moving", np.linspace(0.90, 1.00, 20), 2.36e-3 + noise)
    settled_off = fake_run(tmp_path / "off", np.full(20, 0.994), 2.52e-3 + noise)
    converged = fake_run(tmp_path / "on", np.full(20, 1.01), 2.36e-3 + noise)
    summary = {name: ident.run_summary(run, None, 10, 0.0025, TEACHER)[0]
               for name, run in (("moving", moving), ("off", settled_off), ("on", converged))}
    assert not summary["moving"]["settled"] and not summary["moving"]["converged"]
    assert summary["off"]["settled"] and not summary["off"]["converged"]
    assert summary["on"]["settled"] and summary["on"]["converged"]
    assert abs(summary["on"]["off_teacher_percent"]["lj.epsilon"] - 100 * (1.01 / 0.996 - 1)) < 1e-9
    assert summary["on"]["iteration_diffusion_last_10"]["target"] == 2.36e-3


def fake_network_run(path, scales, diffusion):
    """A network's train directory: metrics naming no parameters (as an MPNN's), and one checkpoint per
    iteration whose weights are `scales[i]` times a fixed set of arrays."""
    import jax
    import jax.numpy as jnp

    from dmd_dist import checkpoint

    path.mkdir()
    (path / "config.toml").write_text((ROOT / "configs/argon_train_quick.toml").read_text())
    rows = [{"iteration": i + 1, "params": {}, "observables": {"diffusion": d}} for i, d in enumerate(diffusion)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    weights = {"embed": jnp.arange(1.0, 7.0).reshape(2, 3), "readout": {"bias": jnp.ones(4)}}
    mngr = checkpoint.manager(path / "checkpoints", keep=len(scales), keep_best=False)
    for i, s in enumerate(scales):
        checkpoint.save(mngr, i + 1, {"params": jax.tree.map(lambda a: s * a, weights)}, {"step": i + 1})
    mngr.wait_until_finished()
    mngr.close()
    return path


def test_a_network_is_judged_by_its_weight_vector_read_from_its_checkpoints(tmp_path):
    """Weights scaled by 1.00 for 10 iterations, then 1.002: the 10-iteration means moved by 0.2% of the
    vector's norm (settled under 0.25%, not under 0.1%); a run missing checkpoints is refused."""
    noise = 0.05e-3 * np.tile([1.0, -1.0], 10)
    run = fake_network_run(tmp_path / "net", [1.0] * 10 + [1.002] * 10, 2.36e-3 + noise)
    summary = ident.run_summary(run, None, 10, 0.0025, TEACHER)[0]
    assert abs(summary["relative_change_of_the_10_iteration_mean"]["network"] - 0.002 / 1.002) < 1e-9
    assert summary["settled"] and summary["converged"] and summary["final"] == {}
    assert not ident.run_summary(run, None, 10, 0.001, TEACHER)[0]["settled"]
    (tmp_path / "net" / "checkpoints" / "3").rename(tmp_path / "net" / "aside")
    with pytest.raises(SystemExit, match=r"no checkpoint of iterations \[3\]"):
        ident.run_summary(run, None, 10, 0.0025, TEACHER)
