"""The paper's workflows end to end, one command each (docs/results.md):

    python -m dmd_dist.workflows argon-mpnn-quick [--out runs/argon-mpnn-quick]

A workflow is a sequence of `dmd-dist` commands (each a subprocess of the CLI, so every step leaves the
run directory and log of the command a user would type, and the exact commands are written into the
results) followed by an evaluation of their outputs: independent `simulate` runs of the teachers and of
the models before and after refinement, force errors against both teachers, a table and figures.  Every
step is skipped when its output already exists, so a rerun after a kill continues where it stopped
(`pretrain` and `train` also resume within themselves).

Argon, ML (issue 13, the paper's argon workflow with its MPNN): the MPNN is pre-trained by energy and
force matching on Lennard-Jones teacher A (the config's `[pretrain] teacher`), then refined by DMD on the
self-diffusion coefficient of teacher B (teacher A with the workflow's `teacher_b` parameters), whose D
the config records as its target.
"""

import argparse
import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from dmd_dist.errors import InputError
from dmd_dist.plots import read_metrics

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("dmd_dist")


@dataclasses.dataclass(frozen=True)
class ArgonMPNN:
    config: str  # relative to the repository
    teacher_b: dict  # [potential] keys that turn teacher A into teacher B
    evaluation: tuple = ()  # --set overrides of the independent simulate runs (more segments than training)
    devices: int = 4  # simulated CPU devices when no accelerator is present


WORKFLOWS = {
    "argon-mpnn-quick": ArgonMPNN("configs/argon_mpnn_refine_quick.toml", {"sigma": 0.340, "epsilon": 0.996},
                                  ("replicas.count=8", "sampling.frames=8")),
    "argon-mpnn": ArgonMPNN("configs/argon_mpnn_refine.toml", {"sigma": 0.340, "epsilon": 0.996},
                            ("replicas.count=16", "sampling.frames=8")),
    "argon-mpnn-tiny": ArgonMPNN("configs/tiny_argon_mpnn_refine.toml", {"sigma": 0.340, "epsilon": 1.6},
                                 ("replicas.count=8", "sampling.frames=4"), devices=2),
}
MODELS = ("teacher A", "teacher B", "pre-trained", "refined")


class StepFailed(RuntimeError):
    """A command of the workflow failed (its own message is above); rerunning continues from it."""


def run_argon_mpnn(wf: ArgonMPNN, out: Path, env=None, progress=True):
    """Pre-train, refine, evaluate; writes out/results.json, out/results.md and out/figures/.  Returns the
    results dict.  `env`: the environment of the commands; `progress`: their progress bars."""
    from dmd_dist.config import dump_config, load_config

    t0 = time.perf_counter()
    out = Path(out).resolve()
    config = (ROOT / wf.config).resolve()
    cfg = load_config(config)  # bad input stops here, before anything is written
    if cfg.potential.kind != "mpnn":
        raise InputError("potential.kind", f"an argon-mpnn workflow refines an MPNN, not {cfg.potential.kind!r}")
    if cfg.pretrain.teacher is None:
        raise InputError("pretrain.teacher", "an argon-mpnn workflow pre-trains on a teacher (teacher A)")
    out.mkdir(parents=True, exist_ok=True)
    commands = []

    def step(args, done):
        """Run `dmd-dist ARGS` unless `done()` says its output is complete."""
        commands.append(" ".join(shlex.quote(str(a)) for a in ["dmd-dist", *args]))
        if done():
            log.info("skip (done): %s", commands[-1])
            return
        log.info("run: %s", commands[-1])
        quiet = [] if progress or args[0] == "plot" else ["--set", "output.progress=false"]
        r = subprocess.run([sys.executable, "-m", "dmd_dist", *map(str, args), *quiet], env=env)
        if r.returncode:
            raise StepFailed(f"exit code {r.returncode} from: {commands[-1]}")

    pre, ref = out / "pretrain", out / "refine"
    step(["pretrain", config, "--workdir", pre], (pre / "pretrain_report.json").exists)
    step(["train", config, "--workdir", ref, "--set", f"potential.checkpoint={pre}"],
         lambda: len(read_metrics(ref)) == cfg.train.iterations)
    step(["plot", ref], (ref / "plots" / "loss.png").exists)

    teacher_a = cfg.pretrain.teacher.model_dump(mode="json", exclude_none=True)
    student = cfg.potential.model_dump(mode="json", exclude_none=True)
    potentials = {"teacher A": teacher_a, "teacher B": teacher_a | wf.teacher_b,
                  "pre-trained": student | {"checkpoint": str(pre)}, "refined": student | {"checkpoint": str(ref)}}
    data = tomllib.loads(dump_config(cfg))
    runs = {}
    for name, potential in potentials.items():
        slug = name.replace(" ", "_").replace("-", "_").lower()
        path = out / "evaluate" / f"{slug}.toml"
        write_config(data | {"potential": potential}, path)
        runs[name] = out / "evaluate" / slug
        step(["simulate", path, "--workdir", runs[name], *[a for s in wf.evaluation for a in ("--set", s)]],
             (runs[name] / "observables.json").exists)

    obs = {name: json.loads((d / "observables.json").read_text()) for name, d in runs.items()}
    results = {
        "workflow": wf.config, "target": {"observable": "diffusion", "value": cfg.targets[0].value},
        "diffusion": {n: _value(o["diffusion"]) for n, o in obs.items()},
        "diffusion_msd": {n: _value(o["diffusion_msd"]) for n, o in obs.items()},
        "force_rmse": force_errors(potentials, runs, cfg),
        "refinement": _refinement(ref),
        "commands": commands, "seconds": None,
    }
    figures = [plot_diffusion(results, out / "figures" / "diffusion.png"),
               plot_rdf(obs, out / "figures" / "rdf.png")]
    results["figures"] = [str(p.relative_to(out)) for p in figures]
    results["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results))
    log.info("results: %s", out / "results.md")
    return results


def write_config(data, path):
    """A config file from a TOML dict, checked by loading it back (bad input stops before any step runs)."""
    import tomli_w

    from dmd_dist.config import load_config

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    load_config(path)


def _value(entry):
    return {"value": entry["value"], "stderr": entry["stderr"]}


def _refinement(workdir):
    rows = read_metrics(workdir)
    return {"iterations": len(rows), "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
            "seconds": sum(r["seconds"] for r in rows)}


def force_errors(potentials, runs, cfg):
    """RMS force differences (kJ/mol/nm) of every model against every teacher, on the start frames that
    each teacher's own `simulate` run sampled (its trajectory.extxyz): {frames of: {model: {vs: rmse}}}."""
    import ase.io
    import jax
    import jax.numpy as jnp

    from dmd_dist.assemble import build_potential, build_system, set_precision

    set_precision(cfg.precision)
    system = build_system(cfg, jax.random.PRNGKey(0))  # topology and box; positions come from the frames
    models = {name: build_potential(cfg.model_copy(update={"potential": type(cfg.potential)(**p)}), system)
              for name, p in potentials.items()}
    out = {}
    for teacher in ("teacher A", "teacher B"):
        frames = ase.io.read(runs[teacher] / "trajectory.extxyz", ":")
        x_all = jnp.asarray(np.stack([a.positions for a in frames]) / 10.0, system.positions.dtype)  # A -> nm
        forces = {}
        for name, (pot, params) in models.items():
            force = jax.jit(pot.forces)  # lists allocated per frame, outside: allocation sizes them
            forces[name] = np.stack([np.asarray(force(params, x, pot.neighbors.allocate(x))) for x in x_all])
        out[f"frames of {teacher}"] = {
            name: {f"vs {t}": float(np.sqrt(np.mean((forces[name] - forces[t]) ** 2))) for t in ("teacher A", "teacher B")}
            for name in MODELS}
        out[f"frames of {teacher}"]["teacher force RMS"] = float(np.sqrt(np.mean(forces[teacher] ** 2)))
    return out


def plot_diffusion(results, path):
    from dmd_dist.plots import _pyplot

    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for i, key in enumerate(("diffusion", "diffusion_msd")):
        vals = [results[key][m]["value"] * 1e3 for m in MODELS]
        errs = [results[key][m]["stderr"] * 1e3 for m in MODELS]
        ax.errorbar(np.arange(len(MODELS)) + (i - 0.5) * 0.2, vals, errs, fmt="o", capsize=3,
                    label={"diffusion": "Green-Kubo", "diffusion_msd": "Einstein (MSD)"}[key])
    ax.axhline(results["target"]["value"] * 1e3, color="k", ls="--", lw=1, label="target (teacher B, recorded)")
    ax.set_xticks(range(len(MODELS)), MODELS)
    ax.set_ylabel("D (10$^{-3}$ nm$^2$/ps)")
    ax.set_title("self-diffusion, independent simulate runs (± standard error)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_rdf(obs, path):
    from dmd_dist.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, style in zip(MODELS, (":", "k-", "--", "-")):
        g = obs[name]["rdf"]
        ax.plot(g["x"], g["value"], style, lw=1.2 if name != "teacher B" else 2.0, label=name)
    ax.set_xlabel("r (nm)")
    ax.set_ylabel("g(r)")
    ax.set_title("radial distribution function")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def results_table(results):
    def d(entry):
        return f"{entry['value'] * 1e3:.3f} ± {entry['stderr'] * 1e3:.3f}"

    lines = [f"# {results['workflow']}", "",
             f"Target D (teacher B, recorded in the config): {results['target']['value'] * 1e3:.3f}·10⁻³ nm²/ps.", "",
             "| model | D Green-Kubo (10⁻³ nm²/ps) | D MSD (10⁻³ nm²/ps) |", "|---|---|---|"]
    lines += [f"| {m} | {d(results['diffusion'][m])} | {d(results['diffusion_msd'][m])} |" for m in MODELS]
    lines += ["", "Force RMSE (kJ/mol/nm) on each teacher's own start frames:", "",
              "| frames | model | vs teacher A | vs teacher B |", "|---|---|---|---|"]
    for frames, rows in results["force_rmse"].items():
        lines += [f"| {frames} | {m} | {rows[m]['vs teacher A']:.3f} | {rows[m]['vs teacher B']:.3f} |" for m in MODELS]
        lines.append(f"| {frames} | (RMS force of the teacher) | {rows['teacher force RMS']:.2f} | |")
    r = results["refinement"]
    lines += ["", f"Refinement: {r['iterations']} iterations, loss {r['loss_first']:.4g} → {r['loss_last']:.4g}, "
              f"{r['seconds']:.0f} s of training iterations; this invocation of the workflow {results['seconds']:.0f} s "
              "(steps found done are skipped).", "", "Commands:", "",
              "```", *results["commands"], "```", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dmd_dist.workflows", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(WORKFLOWS))
    p.add_argument("--out", type=Path, help="output directory (default runs/NAME)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    from dmd_dist.cli import setup_logging

    wf = WORKFLOWS[args.name]
    out = args.out or ROOT / "runs" / args.name
    setup_logging(out)  # out/log.txt: the workflow's steps; each command logs into its own run directory
    env = dict(os.environ)
    if "--xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", ""):  # CPU: simulated devices
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={wf.devices}".strip()
    try:
        run_argon_mpnn(wf, out, env, args.progress)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
