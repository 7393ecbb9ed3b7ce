"""Argon, ML (issue 13, the paper's argon workflow with its MPNN): the MPNN is pre-trained by energy and
force matching on Lennard-Jones teacher A (the config's `[pretrain] teacher`), then refined by DMD on the
self-diffusion coefficient of teacher B (teacher A with the workflow's `teacher_b` parameters), whose D
the config records as its target.
"""

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from dmd_dist.errors import InputError
from dmd_dist.plots import read_metrics
from dmd_dist.workflows.steps import (Steps, evaluate, force_errors, force_table, observables, pick, plot_rdf,
                                     refinement, results_footer, value, write_results)

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("dmd_dist")


@dataclasses.dataclass(frozen=True)
class ArgonMPNN:
    config: str  # relative to the repository
    teacher_b: dict  # [potential] keys that turn teacher A into teacher B
    evaluation: tuple = ()  # --set overrides of the independent simulate runs (more segments than training)
    devices: int = 4  # simulated CPU devices when no accelerator is present

    def run(self, out, env=None, progress=True, jobs=None):
        return run_argon_mpnn(self, out, env, progress, jobs)


MODELS = ("teacher A", "teacher B", "pre-trained", "refined")


def run_argon_mpnn(wf: ArgonMPNN, out: Path, env=None, progress=True, jobs=None):
    """Pre-train, refine, evaluate; writes out/results.json, out/results.md and out/figures/.  Returns the
    results dict.  `env`: the environment of the commands; `progress`: their progress bars; `jobs`: commands
    run side by side."""
    from dmd_dist.config import load_config

    t0 = time.perf_counter()
    out = Path(out).resolve()
    config = (ROOT / wf.config).resolve()
    cfg = load_config(config)  # bad input stops here, before anything is written
    if cfg.potential.kind != "mpnn":
        raise InputError("potential.kind", f"an argon-mpnn workflow refines an MPNN, not {cfg.potential.kind!r}")
    if cfg.pretrain.teacher is None:
        raise InputError("pretrain.teacher", "an argon-mpnn workflow pre-trains on a teacher (teacher A)")
    out.mkdir(parents=True, exist_ok=True)

    pre, ref = out / "pretrain", out / "refine"
    teacher_a = cfg.pretrain.teacher.model_dump(mode="json", exclude_none=True)
    student = cfg.potential.model_dump(mode="json", exclude_none=True)
    models = {"teacher A": teacher_a, "teacher B": teacher_a | wf.teacher_b,
              "pre-trained": student | {"checkpoint": str(pre)}, "refined": student | {"checkpoint": str(ref)}}
    models = {name: {"potential": p} for name, p in models.items()}
    with Steps(env, progress, jobs) as step:
        # Started in an order that keeps `jobs` commands busy: the teachers' runs need nothing before them.
        pretraining = step.start(["pretrain", config, "--workdir", pre], (pre / "pretrain_report.json").exists)
        runs, teachers = evaluate(step, cfg, pick(models, "teacher A", "teacher B"), out, wf.evaluation)
        refining = step.start(["train", config, "--workdir", ref, "--set", f"potential.checkpoint={pre}"],
                              lambda: len(read_metrics(ref)) == cfg.train.iterations, [pretraining])
        runs |= evaluate(step, cfg, pick(models, "pre-trained"), out, wf.evaluation, [pretraining])[0]
        runs |= evaluate(step, cfg, pick(models, "refined"), out, wf.evaluation, [refining])[0]
        step.start(["plot", ref], (ref / "plots" / "loss.png").exists, [refining])
        # The force errors (in this process) start last: beside the refined model's simulate run with two
        # jobs, after every command with one (a GPU: this process then holds no device memory while one runs).
        errors = step.call(lambda: force_errors(models, runs, cfg), [*teachers, refining], "force errors")
        step.wait()
    obs = observables(runs)
    results = {
        "workflow": wf.config, "target": {"observable": "diffusion", "value": cfg.targets[0].value},
        "diffusion": {n: value(o["diffusion"]) for n, o in obs.items()},
        "diffusion_msd": {n: value(o["diffusion_msd"]) for n, o in obs.items()},
        "force_rmse": errors.result(),
        "refinement": refinement(ref),
        "commands": step.commands, "seconds": None,
    }
    results["figures"] = [plot_diffusion(results, out / "figures" / "diffusion.png"),
                          plot_rdf(obs, out / "figures" / "rdf.png", MODELS)]
    return write_results(out, results, results_table, t0)


def plot_diffusion(results, path):
    from dmd_dist.plots import pyplot, save_figure

    plt = pyplot()
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
    return save_figure(fig, path, ax, legend_fontsize=8)


def results_table(results):
    def d(entry):
        return f"{entry['value'] * 1e3:.3f} ± {entry['stderr'] * 1e3:.3f}"

    lines = [f"# {results['workflow']}", "",
             f"Target D (teacher B, recorded in the config): {results['target']['value'] * 1e3:.3f}·10⁻³ nm²/ps.", "",
             "| model | D Green-Kubo (10⁻³ nm²/ps) | D MSD (10⁻³ nm²/ps) |", "|---|---|---|"]
    lines += [f"| {m} | {d(results['diffusion'][m])} | {d(results['diffusion_msd'][m])} |" for m in MODELS]
    lines += ["", *force_table(results["force_rmse"], MODELS)]
    lines += results_footer(results)
    return "\n".join(lines)
