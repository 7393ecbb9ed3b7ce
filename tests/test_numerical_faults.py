"""Numerical faults in training (issue 15): a replica whose sampling or segments go non-finite is masked out
of the ensemble and counted, its chain restarted, and training goes on with an update from the others; when
every segment fails the update is skipped, and after `train.max_failed_iterations` such iterations in a row
the run stops with exit code 4 and one line, with only finite parameters in its checkpoints.  (The gradient
of a masked ensemble equals that of the good segments alone: tests/test_objective.py.)

`train` runs in-process through `cli.main`; a fault is injected into one replica by wrapping the sampler
that the trainer hands to its iteration (`trainer._checked_iteration`)."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import checkpoint
from dmd_dist.train import trainer

from test_bad_input import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"lj": ROOT / "configs/tiny_argon_train.toml", "mpnn": ROOT / "configs/tiny_argon_mpnn_train.toml"}


def train(config, workdir, *overrides):
    """(exit code, stderr) of `dmd-dist train` in this process."""
    sets = [a for o in ("output.progress=false", *overrides) for a in ("--set", o)]
    return run_cli(["train", str(config), "--workdir", str(workdir), *sets])


def rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def inject(monkeypatch, fault):
    """Pass every iteration's sampled chains and frames through `fault(iteration, sampled, frames)` (1-based)."""
    iteration = {"n": 0}
    checked = trainer._checked_iteration

    def with_a_fault(sample, *args):
        iteration["n"] += 1
        n = iteration["n"]
        return checked(lambda params, chains: fault(n, *sample(params, chains)), *args)

    monkeypatch.setattr(trainer, "_checked_iteration", with_a_fault)


def saved_parameters(workdir):
    """step -> the parameters of every checkpoint the run kept, as numpy."""
    ckpt = Path(workdir) / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    return {s: checkpoint.restore_arrays(ckpt, s)["params"] for s in steps}


@pytest.mark.parametrize("model", ["lj", "mpnn"])
def test_replicas_that_blow_up_while_sampling_are_masked_restarted_and_training_goes_on(tmp_path, monkeypatch, model):
    """In iteration 2 replica 1's chain and its start frames turn NaN (as a chain blown up by a too-large step
    would), in iteration 3 every replica's: iteration 2 masks that replica's segments and applies the update
    from the others, iteration 3 has no segment left and skips its update (parameters unchanged, loss NaN),
    every blown-up chain restarts from where it stood, and iteration 4 has all its segments again and updates;
    the run finishes (3 failed iterations in a row would be needed to stop it) with finite parameters in
    every checkpoint."""
    blown_up = {2: [1], 3: [0, 1, 2, 3]}  # iteration -> replicas

    def fault(iteration, sampled, frames):
        replicas = np.asarray(blown_up.get(iteration, []), int)
        if replicas.size:
            sampled = dataclasses.replace(sampled, position=sampled.position.at[replicas, 0, 0].set(jnp.nan))
            frames = dataclasses.replace(frames, position=frames.position.at[replicas, :, 0, 0].set(jnp.nan))
        return sampled, frames

    inject(monkeypatch, fault)
    code, err = train(CONFIGS[model], tmp_path / "run", "train.iterations=4")
    assert code == 0, err
    m = rows(tmp_path / "run")
    frames = 2 if model == "lj" else 1
    assert [r["masked_replicas"] for r in m] == [0, frames, 4 * frames, 0]
    assert [r["restarted_chains"] for r in m] == [0, 1, 4, 0]
    assert [r["update_skipped"] for r in m] == [False, False, True, False]
    assert [np.isfinite(r["loss"]) for r in m] == [True, True, False, True]
    sha = [r["params_sha256"] for r in m]
    assert len(set(sha)) == 3 and sha[2] == sha[1]  # only the failed iteration left the model as it was
    # NaN positions make meaningless neighbour counts: no list is re-allocated for them.
    assert m[2]["neighbor_reallocations"] == m[1]["neighbor_reallocations"]
    for params in saved_parameters(tmp_path / "run").values():
        assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(params))


@pytest.mark.parametrize("model", ["lj", "mpnn"])
def test_a_failed_iteration_restarts_every_chain_from_before_it_with_fresh_noise(tmp_path, monkeypatch, model):
    """Iteration 2's windows all blow up while its chains stay finite (as when a chain has wandered where the
    potential misbehaves): its update is skipped, and its chains are not kept either: every replica starts
    again from its state after iteration 1 (positions, velocities, forces) with new random keys, so that the
    next iteration samples afresh instead of handing on the same frames (the tiny water MPNN of seed 1 failed
    three iterations in a row that way, and trains through with this)."""
    def fault(iteration, sampled, frames):
        if iteration == 2:
            frames = dataclasses.replace(frames, position=frames.position.at[:, :, 0, 0].set(jnp.nan))
        return sampled, frames

    inject(monkeypatch, fault)
    code, err = train(CONFIGS[model], tmp_path / "run", "train.iterations=3")
    assert code == 0, err
    m = rows(tmp_path / "run")
    assert [r["update_skipped"] for r in m] == [False, True, False]
    assert [r["restarted_chains"] for r in m] == [0, 4, 0]
    ckpt = tmp_path / "run" / "checkpoints"
    first, second = (checkpoint.restore_arrays(ckpt, step)["chains"] for step in (1, 2))
    for name in ("position", "velocity", "force"):
        np.testing.assert_array_equal(second[name], first[name])
    assert not np.any(np.all(np.asarray(second["key"]) == np.asarray(first["key"]), axis=-1))


def test_when_every_segment_fails_updates_are_skipped_and_the_run_stops_with_code_4(tmp_path):
    """A segment time step 500 times too large: every window blows up in every iteration (the atoms fly
    apart: D comes out near 1e20 nm^2/ps, and the gradient is NaN).  Each iteration is recorded with
    update_skipped, the parameters never change, the run stops after train.max_failed_iterations = 2 with
    exit code 4 and one line naming the key, and every checkpoint holds the initial, finite parameters.
    No neighbour list is re-allocated for the blown-up segments."""
    work = tmp_path / "run"
    code, err = train(CONFIGS["lj"], work, "train.max_failed_iterations=2", "segments.dt=2.0")
    assert code == 4
    assert err.strip().splitlines()[-1].startswith("error: train.max_failed_iterations: 2 iterations in a row (up to 2) had no finite")
    m = rows(work)
    assert [r["update_skipped"] for r in m] == [True, True]
    assert not any(np.isfinite(r["grad_norm"]) for r in m)
    assert len({r["params_sha256"] for r in m}) == 1
    assert m[0]["params"] == {"lj.sigma": 0.338, "lj.epsilon": 0.8938}
    saved = saved_parameters(work)
    assert sorted(saved) == [1, 2]
    for params in saved.values():
        assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(params))

    # Resumed with the same settings, the next failed iteration stops it again at once (the count of failed
    # iterations in a row is part of the checkpoint).
    assert train(CONFIGS["lj"], work, "train.max_failed_iterations=2", "segments.dt=2.0")[0] == 4
    assert [r["iteration"] for r in rows(work)] == [1, 2, 3]


def test_a_list_that_overflows_only_in_the_backward_pass_is_grown_and_the_gradient_redone():
    """The backward pass's overflow reaches the host only as an infinite reconstruction error
    (`backward_error`): the frames' lists are re-allocated a tenth larger (at least one slot), the
    re-allocation counted, and the gradient redone on the same frames, without sampling again."""
    from dmd_dist.driver import OverflowCounter

    @dataclasses.dataclass
    class Lists:
        capacity: int

    @dataclasses.dataclass
    class Frames:
        neighbors: Lists

    calls = {"sample": 0, "gradient": []}

    def sample(params, chains):
        calls["sample"] += 1
        return chains, Frames(Lists(20))

    def value_and_grad(params, frames):
        calls["gradient"].append(frames.neighbors.capacity)
        error = np.inf if frames.neighbors.capacity < 25 else 1e-12
        check = {"sampling_overflow": 0, "sampling_max_count": 0, "segment_overflow": 0, "segment_max_count": 0,
                 "backward_error": error}
        return (0.5, ({}, {}, 8, check, None)), {"g": 1.0}

    counter = OverflowCounter()
    _, frames, (loss, _, _, count, _), grads = trainer._checked_iteration(
        sample, value_and_grad, {}, "chains", lambda s, capacity: Frames(Lists(capacity)), counter, 1.0)
    assert calls == {"sample": 1, "gradient": [20, 22, 25]}  # 20 -> 22 (ceil 1.1 x 20) -> 25 (ceil 1.1 x 22)
    assert counter.reallocations == 2 and frames.neighbors.capacity == 25 and grads == {"g": 1.0}


@pytest.mark.parametrize("model", ["lj", "mpnn"])
def test_windows_that_break_energy_conservation_are_masked_with_max_energy_error(tmp_path, monkeypatch, model):
    """`segments.max_energy_error`: a window whose E = U + K strays from its frame's by more than the limit
    counts as failed, like a non-finite one (in float32 a blown-up window can keep finite statistics while its
    gradient overflows and fails the whole iteration).  With a limit no window meets (1e-12 kJ/mol per atom)
    every window is masked: both iterations skip their update and restart every chain.  With LJ and a limit
    of 1 kJ/mol per atom, replica 1's frames given 30 times their velocities in iteration 2 (85 000 K: the
    time step fails, tests/test_adjoint.py) are masked and that chain alone restarts; the update comes from
    the others."""
    code, err = train(CONFIGS[model], tmp_path / "all", "train.iterations=2", "segments.max_energy_error=1e-12")
    assert code == 0, err
    m = rows(tmp_path / "all")
    frames = 2 if model == "lj" else 1
    assert [r["masked_replicas"] for r in m] == [4 * frames, 4 * frames]
    assert [r["update_skipped"] for r in m] == [True, True] and [r["restarted_chains"] for r in m] == [4, 4]
    if model != "lj":
        return
    def fault(iteration, sampled, frames):
        if iteration == 2:
            frames = dataclasses.replace(frames, velocity=frames.velocity.at[1].multiply(30.0))
        return sampled, frames

    inject(monkeypatch, fault)
    code, err = train(CONFIGS[model], tmp_path / "one", "train.iterations=3", "segments.max_energy_error=1.0")
    assert code == 0, err
    m = rows(tmp_path / "one")
    assert [r["masked_replicas"] for r in m] == [0, frames, 0]
    assert [r["restarted_chains"] for r in m] == [0, 1, 0]
    assert [r["update_skipped"] for r in m] == [False, False, False]
