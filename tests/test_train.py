"""`dmd-dist train`: metrics, exact resume (after a clean stop, SIGTERM, kill -9), device-count
independence, refused resumes.  Every run is a real subprocess of the CLI on configs/tiny_argon_train.toml
(Lennard-Jones) or, for the tests that every model must pass, configs/tiny_argon_mpnn_train.toml (the MPNN)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from session_runs import once_per_session

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/tiny_argon_train.toml"
CONFIGS = {"lj": CONFIG, "mpnn": ROOT / "configs/tiny_argon_mpnn_train.toml"}
QUIET = ["--set", "output.progress=false"]


def command(workdir, *extra, model="lj"):
    return [sys.executable, "-m", "dmd_dist", "train", str(CONFIGS[model]), "--workdir", str(workdir), *QUIET, *extra]


def env(devices=1):
    return dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def train(workdir, *extra, devices=1, model="lj"):
    return subprocess.run(command(workdir, *extra, model=model), capture_output=True, text=True, env=env(devices),
                          timeout=600)


def metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """model -> an uninterrupted run of its config on one device, (workdir, metrics); each runs once per
    session (tests/session_runs.py: the LJ one is tests/integration's one-process reference too)."""
    def made(model):
        def run(work):
            r = train(work, model=model)
            assert r.returncode == 0, r.stderr[-3000:]
        work = once_per_session(tmp_path_factory, f"train-{model}-1-device", run)
        return work, metrics(work)

    return made


@pytest.fixture(scope="module")
def reference_run(references):
    return references("lj")


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run[1]


def test_mpnn_training_writes_metrics_and_changes_the_network(references):
    work, rows = references("mpnn")
    assert [m["iteration"] for m in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) and m["masked_replicas"] == 0 and m["grad_norm"] > 0 for m in rows)
    assert len({m["params_sha256"] for m in rows}) == 4  # every update moved the parameters
    assert rows[-1]["neighbor_reallocations"] > 0  # no headroom in the config: the overflow path ran


def test_training_writes_metrics_and_moves_toward_the_target(reference):
    assert [m["iteration"] for m in reference] == [1, 2, 3, 4, 5]
    for m in reference:
        for key in ("loss", "grad_norm", "seconds", "observables", "params", "params_sha256", "masked_replicas",
                    "neighbor_reallocations", "loss_terms"):
            assert key in m
        assert m["masked_replicas"] == 0 and np.isfinite(m["loss"])
    assert reference[-1]["neighbor_reallocations"] > 0  # the config leaves no headroom: the overflow path ran
    # D starts above the target (2.36e-3 nm^2/ps): a deeper well (larger epsilon) slows diffusion.
    assert reference[0]["observables"]["diffusion"] > 0.00236
    assert reference[-1]["params"]["lj.epsilon"] > reference[0]["params"]["lj.epsilon"] > 0.8938


def test_refined_parameters_bring_an_independent_d_closer_to_the_target(tmp_path, reference_run):
    """An iteration's D is a noisy estimate from 8 segments, so judge the run by independent `simulate` runs
    (32 segments each) at the config's starting parameters and at the final ones, which `simulate` reads from
    the train run (`potential.checkpoint`).  Both use the same seeds: the two estimates share their noise, so
    their difference is far more precise than either standard error."""
    from dmd_dist.config import load_config
    from dmd_dist.losses import build_targets

    def diffusion(name, *sets):
        work = tmp_path / name
        cmd = [sys.executable, "-m", "dmd_dist", "simulate", str(CONFIG), "--workdir", str(work), *QUIET,
               "--set", "output.trajectory=false", "--set", "replicas.count=8", "--set", "sampling.frames=4", *sets]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        d = json.loads((work / "observables.json").read_text())["diffusion"]
        return d["value"], d["stderr"]

    (d0, err0), (d1, err1) = diffusion("start"), diffusion("refined", "--set", f"potential.checkpoint={reference_run[0]}")
    # measured: 3.40e-3 +- 0.11e-3 at the start, 3.18e-3 +- 0.10e-3 after 5 iterations (target 2.36e-3)
    assert d0 - d1 > max(err0, err1), (d0, err0, d1, err1)
    target = build_targets(load_config(CONFIG).targets)
    assert target.targets[0].value < d1 < d0
    assert target({"diffusion": d1})[0] < target({"diffusion": d0})[0]  # the training loss falls


def test_resume_after_a_completed_run_continues_bit_for_bit(tmp_path, reference):
    work = tmp_path / "run"
    r = train(work, "--set", "train.iterations=2")
    assert r.returncode == 0, r.stderr[-3000:]
    r = train(work)  # same workdir, more iterations: resumes at 2
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from iteration 2" in r.stderr
    assert [m["params_sha256"] for m in metrics(work)] == [m["params_sha256"] for m in reference]


def test_a_train_run_is_a_model_for_every_command(references):
    """`potential.checkpoint` accepts a train run directory (its latest iteration): of an MPNN, as it does a
    pretrain one, and of a classical potential, whose refined parameters replace the config's; a run of
    another kind is refused with a line saying why."""
    from dmd_dist.assemble import build_potential, build_system, set_precision
    from dmd_dist.config import load_config
    from dmd_dist.errors import InputError
    from dmd_dist.params import flatten
    from dmd_dist.potentials.pretrained import load_pretrained, pretrained_meta
    from dmd_dist.train.trainer import params_sha256

    work, rows = references("mpnn")
    meta = pretrained_meta(work)
    assert meta["kind"] == "dmd-dist train" and meta["step"] == len(rows) and meta["preset"] == "tiny"
    assert meta["potential_kind"] == "mpnn"
    assert params_sha256(load_pretrained(work)) == rows[-1]["params_sha256"]
    lj_work, lj_rows = references("lj")
    with pytest.raises(InputError, match=r"classical potential \(lennard_jones\), not an MPNN"):
        pretrained_meta(lj_work)

    def model(config, *sets):
        cfg = load_config(config, list(sets))
        set_precision(cfg.precision)
        return build_potential(cfg, build_system(cfg, jax.random.PRNGKey(0)))[1]

    refined = model(CONFIG, f"potential.checkpoint={lj_work}")
    assert params_sha256(refined) == lj_rows[-1]["params_sha256"]
    assert flatten(refined) == pytest.approx(lj_rows[-1]["params"], rel=1e-15)
    assert flatten(refined) != pytest.approx(flatten(model(CONFIG)), rel=1e-6)  # training moved them
    # `parameters` comes after the checkpoint
    assert flatten(model(CONFIG, f"potential.checkpoint={lj_work}", 'potential.parameters={"lj.sigma" = 0.35}')) == \
        {**lj_rows[-1]["params"], "lj.sigma": 0.35}
    with pytest.raises(InputError, match="holds a model of potential.kind = 'mpnn', not 'lennard_jones'"):
        model(CONFIG, f"potential.checkpoint={work}")


@pytest.mark.parametrize("model,devices", [("lj", 2), ("lj", 4), ("mpnn", 2), ("mpnn", 4)])
def test_results_do_not_depend_on_the_device_count(tmp_path, references, model, devices):
    """Parameters (LJ: every one by name; MPNN: the metrics carry none, so the restored network, leaf by leaf)
    and losses agree with the one-device run to 1e-10."""
    ref_work, reference = references(model)
    r = train(tmp_path / "run", devices=devices, model=model)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"on {devices} device(s)" in r.stderr
    rows = metrics(tmp_path / "run")
    assert len(rows) == len(reference)
    for a, b in zip(rows, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-10)
        for name in b["params"]:
            assert a["params"][name] == pytest.approx(b["params"][name], rel=1e-10)
    if model == "mpnn":
        # A constant energy per atom changes no force: the per-species offset and the readout's last bias have
        # a zero gradient, and Adam (which normalises the step) moves them by rounding noise (measured 1e-11
        # to 3e-10) whose digits depend on the devices' summation order.  They stay below 1e-8; every other
        # leaf is compared, to 1e-10 of the network's parameter scale (~1).
        from dmd_dist.potentials.pretrained import load_pretrained

        def leaves(params):
            return {jax.tree_util.keystr(p): np.asarray(a) for p, a in jax.tree_util.tree_flatten_with_path(params)[0]}

        run, ref = (leaves(load_pretrained(w)) for w in (tmp_path / "run", ref_work))
        for constant in ("['offset']", "['readout']['layers']['1']['bias']"):
            assert np.abs(run.pop(constant)).max() < 1e-8 and np.abs(ref.pop(constant)).max() < 1e-8
        assert run.keys() == ref.keys() and len(ref) == 22
        scale = max(float(np.abs(b).max()) for b in ref.values())
        for name, b in ref.items():
            np.testing.assert_allclose(run[name], b, rtol=1e-10, atol=1e-10 * scale, err_msg=name)


def _wait_for(condition, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if condition():
            return
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    raise TimeoutError


def _wait_for_iterations(work, n, proc):
    path = work / "metrics.jsonl"
    _wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= n, proc)


# Every way for LJ; the MPNN (whose network and Adam state must come back too) by kill -9 during a save, the
# harshest: its plain kill -9 and SIGTERM during a save run on demand (`-m faults_long`), as do
# benchmarks/faults.py's ten kill -9 trials per model (docs/reliability.md).
@pytest.mark.parametrize("model,how", [("lj", "SIGTERM"), ("lj", "SIGKILL"), ("lj", "SIGTERM-at-start"),
                                       ("lj", "SIGKILL-during-save"), ("lj", "SIGTERM-during-save"),
                                       ("mpnn", "SIGKILL-during-save"),
                                       pytest.param("mpnn", "SIGKILL", marks=pytest.mark.faults_long),
                                       pytest.param("mpnn", "SIGTERM-during-save", marks=pytest.mark.faults_long)])
def test_killed_run_resumes_bit_identical(tmp_path, references, model, how):
    """SIGTERM: the iteration in flight finishes, a checkpoint is saved, exit code 3.  kill -9: at most the
    iteration in flight is lost.  Either way the same command resumes to the uninterrupted result.  A
    SIGTERM during start-up (the run's config.toml written, nothing compiled yet; a scheduler's early
    signal) once killed the process with code 143: now it stops with code 3 before the first iteration.
    `-during-save`: the signal comes from inside the process as soon as the (asynchronous) orbax save of
    iteration 2 has begun (benchmarks/faults.py's injection): kill -9 leaves a half-written step, which is
    never resumed from; SIGTERM stops the run after iteration 3."""
    reference = references(model)[1]
    work = tmp_path / "run"
    cmd, environment = command(work, model=model), env()
    if how.endswith("-during-save"):
        cmd[1:3] = [str(ROOT / "benchmarks/faults.py"), "child"]
        environment["DMD_FAULT"] = {"SIGKILL-during-save": "kill9:save:2", "SIGTERM-during-save": "sigterm:save:2"}[how]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    if how == "SIGTERM-at-start":
        _wait_for(lambda: (work / "config.toml").exists(), proc)
    elif not how.endswith("-during-save"):
        _wait_for_iterations(work, 1, proc)
    if "-during-" not in how:
        proc.send_signal(getattr(signal, how.removesuffix("-at-start")))
    proc.wait(timeout=300)
    if how.startswith("SIGTERM"):
        assert proc.returncode == 3, proc.stderr.read()[-3000:]
    else:
        assert proc.returncode == -9
    if how.endswith("-during-save"):
        assert "during save (in progress: True)" in proc.stderr.read()
        assert len(metrics(work)) == (3 if how.startswith("SIGTERM") else 2)
    def half_written():
        return [p.name for p in (work / "checkpoints").iterdir() if "tmp" in p.name]

    left = half_written() if how == "SIGKILL-during-save" else None
    r = train(work, model=model)
    assert r.returncode == 0, r.stderr[-3000:]
    if left is not None:  # the save's temporary directory was left behind, and the rerun removed it
        assert left and not half_written()
    assert [m["params_sha256"] for m in metrics(work)] == [m["params_sha256"] for m in reference]


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, references, damage):
    """The finished reference run with its last checkpoint (iteration 5) cut short or deleted, and a metrics
    line cut off mid-write: the same command resumes from iteration 4 (warning about the unreadable step),
    redoes iteration 5 and ends bit-identical to the uninterrupted run."""
    ref_work, reference = references("lj")
    work = tmp_path / "run"
    shutil.copytree(ref_work, work)
    last = work / "checkpoints" / "5"
    if damage == "truncated":
        for p in (p for p in last.rglob("*") if p.is_file() and "state" in p.parts):
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        shutil.rmtree(last)
    with (work / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 6, "lo')
    r = train(work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from iteration 4" in r.stderr
    assert ("checkpoint step 5 in" in r.stderr) == (damage == "truncated")
    assert [m["params_sha256"] for m in metrics(work)] == [m["params_sha256"] for m in reference]


def test_resume_with_a_changed_model_is_refused(tmp_path, references):
    work = tmp_path / "run"
    shutil.copytree(references("lj")[0], work)  # a finished run of the same config
    before = (work / "metrics.jsonl").read_text()
    r = train(work, "--set", "potential.cutoff=0.55")
    assert r.returncode == 2 and r.stderr.startswith("error: potential.cutoff: differs from the checkpoint")
    assert len(r.stderr.strip().splitlines()) == 1
    assert (work / "metrics.jsonl").read_text() == before


def test_replicas_not_divisible_by_devices_is_bad_input(tmp_path):
    r = train(tmp_path / "run", "--set", "replicas.count=3", devices=2)
    assert r.returncode == 2 and r.stderr.startswith("error: replicas.count:")
    assert not (tmp_path / "run").exists()


def test_plot_draws_loss_parameters_and_observables_against_targets(reference_run):
    work = reference_run[0]
    r = subprocess.run([sys.executable, "-m", "dmd_dist", "plot", str(work)], capture_output=True, text=True,
                       env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {Path(p).name for p in r.stdout.split()} == {"loss.png", "params.png", "observables.png"}
    assert all((work / "plots" / n).stat().st_size > 1000 for n in ("loss.png", "params.png", "observables.png"))


WATER_MPNN = ROOT / "configs/tiny_water_ir_mpnn_refine.toml"


def test_a_learned_dipole_is_refined_with_the_network_and_frozen_by_a_zero_learning_rate(tmp_path):
    """An MPNN with the learned dipole model on an IR target: with `learning_rate = {dipole = 1e-3,
    default = 0}` every dipole parameter group moves and no network parameter does; the train run's
    checkpoint then serves as `dipole.checkpoint` (the refined dipole) and as `potential.checkpoint` (the
    network alone)."""
    from dmd_dist import checkpoint
    from dmd_dist.assemble import build_dipole, build_potential, build_system, set_precision
    from dmd_dist.config import load_config

    work = tmp_path / "joint"
    overrides = ['dipole.model="learned"', "train.iterations=2", "replicas.count=2", "sampling.frames=2",
                 "sampling.equilibration_steps=20", "sampling.steps_between_frames=20", "segments.steps=20",
                 "system.equilibration_steps=200", "optimizer.learning_rate={dipole=1e-3, default=0.0}"]
    r = subprocess.run([sys.executable, "-m", "dmd_dist", "train", str(WATER_MPNN), "--workdir", str(work), *QUIET,
                        *[a for o in overrides for a in ("--set", o)]], capture_output=True, text=True, env=env(),
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(work)
    assert len(rows) == 2 and all(np.isfinite(row["grad_norm"]) and row["grad_norm"] > 0 for row in rows)

    cfg = load_config(WATER_MPNN, overrides[:1])
    set_precision(cfg.precision)
    system = build_system(cfg, jax.random.PRNGKey(0))
    _, start = build_dipole(cfg, system, *build_potential(cfg, system))
    step, _ = checkpoint.latest_meta(work / "checkpoints")
    refined = checkpoint.restore_arrays(work / "checkpoints", step)["params"]
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), refined, start)
    assert all(jax.tree.leaves(moved["dipole"])), moved["dipole"]
    assert not any(jax.tree.leaves({k: v for k, v in moved.items() if k != "dipole"}))

    loaded = load_config(WATER_MPNN, [*overrides[:1], f"dipole.checkpoint={work}", f"potential.checkpoint={work}"])
    _, params = build_dipole(loaded, system, *build_potential(loaded, system))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(refined)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
