"""Water IR, classical (issue 13): the SPC/Fw-like flexible water starts with perturbed force constants
(the config's `potential.parameters`) and is refined by DMD on the IR spectrum of the unperturbed model
(the config's target), so the answer is known: the workflow's `true_parameters`.  Judged by independent
`simulate` runs of the start, the refined and the true model: the peak positions of the bend and stretch
bands (jackknife standard errors over segments), and the parameters against the true ones.
"""

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from dmd_dist.errors import InputError
from dmd_dist.plots import read_metrics
from dmd_dist.workflows.steps import (Steps, evaluate, observables, pick, refinement, results_footer, value,
                                     write_results)

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("dmd_dist")
MODELS = ("start", "refined", "true")
BANDS = ("libration", "bend", "stretch")


@dataclasses.dataclass(frozen=True)
class WaterIRClassical:
    config: str  # relative to the repository
    true_parameters: dict  # the model whose spectrum is the target, by parameter name
    evaluation: tuple = ()  # --set overrides of the independent simulate runs
    devices: int = 2  # simulated CPU devices when no accelerator is present

    def run(self, out, env=None, progress=True, jobs=None):
        return run_water_ir_classical(self, out, env, progress, jobs)


def run_water_ir_classical(wf: WaterIRClassical, out: Path, env=None, progress=True, jobs=None):
    """Refine, evaluate; writes out/results.json, out/results.md and out/figures/; returns the results."""
    from dmd_dist.config import load_config

    t0 = time.perf_counter()
    out = Path(out).resolve()
    config = (ROOT / wf.config).resolve()
    cfg = load_config(config)  # bad input stops here, before anything is written
    if not cfg.potential.parameters:
        raise InputError("potential.parameters", "a classical IR workflow starts from perturbed parameters")
    if [t.observable for t in cfg.targets] != ["ir"]:
        raise InputError("targets", "a classical IR workflow refines on one target, the IR spectrum")
    unknown = sorted(set(cfg.potential.parameters) - set(wf.true_parameters))
    if unknown:
        raise InputError(f"potential.parameters.{unknown[0]}", "has no true value in the workflow")
    out.mkdir(parents=True, exist_ok=True)

    ref = out / "refine"
    # `parameters` applies after `checkpoint`: the refined model must not carry the start's.
    base = cfg.potential.model_dump(mode="json", exclude_none=True, exclude={"parameters"})
    models = {"start": base | {"parameters": cfg.potential.parameters}, "refined": base | {"checkpoint": str(ref)},
              "true": base | {"parameters": wf.true_parameters}}
    models = {name: {"potential": p} for name, p in models.items()}
    evaluation = ("output.trajectory=false", *wf.evaluation)
    with Steps(env, progress, jobs) as step:
        refining = step.start(["train", config, "--workdir", ref],
                              lambda: len(read_metrics(ref)) == cfg.train.iterations)
        runs, _ = evaluate(step, cfg, pick(models, "start", "true"), out, evaluation)  # beside the refinement
        runs |= evaluate(step, cfg, pick(models, "refined"), out, evaluation, [refining])[0]
        step.start(["plot", ref], (ref / "plots" / "loss.png").exists, [refining])
        step.wait()
    obs = observables(pick(runs, *MODELS))
    rows = read_metrics(ref)
    refined = {n: rows[-1]["params"][n] for n in cfg.potential.parameters}
    results = {
        "workflow": wf.config,
        "parameters": {n: {"start": cfg.potential.parameters[n], "refined": refined[n], "true": wf.true_parameters[n]}
                       for n in cfg.potential.parameters},
        "bands": {m: {b: value(obs[m][f"ir_peak_{b}"]) for b in BANDS} for m in MODELS},
        "refinement": refinement(ref), "commands": step.commands, "seconds": None,
    }
    results["figures"] = [plot_spectra(obs, cfg.targets[0].file, out / "figures" / "ir.png", dict(zip(MODELS, ("--", "-", ":"))),
                                       "target (recorded spectrum of the true model)", "IR spectrum of SPC/Fw-like water"),
                          plot_parameters(rows, results["parameters"], out / "figures" / "parameters.png")]
    results["band_moves"] = {b: band_move(results["bands"], b, *MODELS) for b in BANDS}
    return write_results(out, results, results_table, t0)


def plot_spectra(obs, target_file, path, styles, target_label, title):
    """The IR spectra of the models in `styles` (name -> line style) over the recorded target."""
    from dmd_dist.losses import read_curve
    from dmd_dist.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=120)
    x, y = read_curve(target_file, "targets.0.file")
    ax.plot(x, y, "k-", lw=2.0, alpha=0.4, label=target_label)
    for name, style in styles.items():
        ir = obs[name]["ir"]
        ax.plot(ir["x"], ir["value"], style, lw=1.2, label=f"{name} (independent simulate)")
    ax.set_xlim(0, 4000)
    ax.set_xlabel("wavenumber (cm$^{-1}$)")
    ax.set_ylabel(r"n($\omega$) $\alpha$($\omega$) (cm$^{-1}$)")
    ax.set_title(title)
    return save_figure(fig, path, ax, legend_fontsize=8)


def plot_parameters(rows, parameters, path):
    from dmd_dist.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    iterations = [0] + [r["iteration"] for r in rows]
    for name, p in parameters.items():
        ax.plot(iterations, [p["start"] / p["true"]] + [r["params"][name] / p["true"] for r in rows], "o-", ms=3,
                label=name)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="true")
    ax.set_xlabel("iteration")
    ax.set_ylabel("parameter / true value")
    ax.set_title("force constants during refinement")
    return save_figure(fig, path, ax)


def results_table(results):
    def band(entry):
        return f"{entry['value']:.1f} ± {entry['stderr']:.1f}"

    lines = [f"# {results['workflow']}", "", "Band peaks (cm⁻¹), independent simulate runs (jackknife standard errors):",
             "", "| model | " + " | ".join(BANDS) + " |", "|---|" + "---|" * len(BANDS)]
    lines += [f"| {m} | " + " | ".join(band(results["bands"][m][b]) for b in BANDS) + " |" for m in MODELS]
    lines += ["", "Moved toward the true peak: " + "; ".join(
        f"{b} {m['moved']:.1f} cm⁻¹ ({m['moved'] / m['stderr']:.1f} combined SE)" for b, m in results["band_moves"].items()
        if b != "libration") + ".", ""]
    lines += ["| parameter | start | refined | true | refined / true |", "|---|---|---|---|---|"]
    for name, p in results["parameters"].items():
        lines.append(f"| {name} | {p['start']:.6g} | {p['refined']:.6g} | {p['true']:.6g} | "
                     f"{p['refined'] / p['true']:.4f} |")
    lines += results_footer(results)
    return "\n".join(lines)


def band_move(bands, band, start, refined, true):
    """How far (cm^-1) a band's peak moved from model `start` to model `refined` toward model `true`'s, with
    the combined standard error of the start and refined peaks."""
    b = {m: bands[m][band] for m in (start, refined, true)}
    moved = abs(b[start]["value"] - b[true]["value"]) - abs(b[refined]["value"] - b[true]["value"])
    return {"moved": moved, "stderr": float(np.hypot(b[start]["stderr"], b[refined]["stderr"]))}
