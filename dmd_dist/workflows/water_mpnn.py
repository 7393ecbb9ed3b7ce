"""Water IR, ML (issue 13): the MPNN is pre-trained by energy and force matching on SPC/Fw-like teacher A
(the config's `[pretrain] teacher`), then refined by DMD on the IR spectrum of teacher B (teacher A with
the workflow's `teacher_b` keys), which the config records as its target.  The dipole is the config's
`[dipole]` model: fixed charges, or (`learned_dipole`) the learned model, pre-trained on teacher A's
dipoles by `pretrain` with target "dipole" and refined with the network (or frozen by a learning rate of
0 for `dipole`).  Judged by independent `simulate` runs of the four models: band peaks with jackknife
standard errors, and force errors against both teachers.
"""

import dataclasses
import logging
import time
from pathlib import Path

from dmd_dist.errors import InputError
from dmd_dist.plots import read_metrics
from dmd_dist.workflows.steps import (Steps, evaluate, force_errors, force_table, observables, pick, plot_rdf,
                                     refinement, results_footer, value, write_results)
from dmd_dist.workflows.water import BANDS, band_move, plot_spectra

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("dmd_dist")
MODELS = ("teacher A", "teacher B", "pre-trained", "refined")


@dataclasses.dataclass(frozen=True)
class WaterIRMPNN:
    config: str  # relative to the repository
    teacher_b: dict  # [potential] keys that turn teacher A into teacher B
    evaluation: tuple = ()  # --set overrides of the independent simulate runs
    learned_dipole: bool = False  # pre-train the learned dipole model and refine it with the network
    overrides: tuple = ()  # --set overrides of the config, on every command (e.g. a second target)
    devices: int = 2  # simulated CPU devices when no accelerator is present

    def run(self, out, env=None, progress=True, jobs=None):
        return run_water_ir_mpnn(self, out, env, progress, jobs)


# The learned-dipole variant's [dipole], on every command: the network learns the charges from zero.
LEARNED = ('dipole.model="learned"', "dipole.charges=0.0")


def run_water_ir_mpnn(wf: WaterIRMPNN, out: Path, env=None, progress=True, jobs=None):
    """Pre-train (the network, and the dipole model if learned), refine, evaluate; writes out/results.json,
    out/results.md and out/figures/.  Returns the results dict."""
    from dmd_dist.config import load_config

    t0 = time.perf_counter()
    out = Path(out).resolve()
    config = (ROOT / wf.config).resolve()
    overrides = (*wf.overrides, *(LEARNED if wf.learned_dipole else ()))
    cfg = load_config(config, overrides)  # bad input stops here, before anything is written
    sets = [a for o in overrides for a in ("--set", o)]
    if cfg.potential.kind != "mpnn":
        raise InputError("potential.kind", f"a water-ir-mpnn workflow refines an MPNN, not {cfg.potential.kind!r}")
    if cfg.pretrain.teacher is None or cfg.pretrain.teacher.kind != "spc_fw":
        raise InputError("pretrain.teacher", "a water-ir-mpnn workflow pre-trains on a water teacher (spc_fw)")
    if cfg.targets[0].observable != "ir":
        raise InputError("targets.0.observable", "a water-ir-mpnn workflow refines on the IR spectrum first")
    out.mkdir(parents=True, exist_ok=True)

    pre, pre_dipole, ref = out / "pretrain", out / "pretrain_dipole", out / "refine"
    learned = wf.learned_dipole
    teacher_a = cfg.pretrain.teacher.model_dump(mode="json", exclude_none=True)
    student = cfg.potential.model_dump(mode="json", exclude_none=True)
    models = {"teacher A": {"potential": teacher_a}, "teacher B": {"potential": teacher_a | wf.teacher_b},
              "pre-trained": {"potential": student | {"checkpoint": str(pre)}},
              "refined": {"potential": student | {"checkpoint": str(ref)}}}
    charges = {"model": "coulomb"}  # the teachers' dipole: their own charges
    dipole = cfg.dipole.model_dump(mode="json", exclude_none=True)
    dipole_from = {"pre-trained": pre_dipole, "refined": ref}
    for name in MODELS:
        models[name]["dipole"] = charges if name.startswith("teacher") else (
            dipole | {"checkpoint": str(dipole_from[name])} if learned else dipole)

    with Steps(env, progress, jobs) as step:
        # Started in an order that keeps `jobs` commands busy: the teachers' runs need nothing before them.
        pretraining = [step.start(["pretrain", config, "--workdir", pre, *sets], (pre / "pretrain_report.json").exists)]
        if learned:
            pretraining.append(step.start(["pretrain", config, "--workdir", pre_dipole, *sets, "--set",
                                          'pretrain.target="dipole"'], (pre_dipole / "pretrain_report.json").exists))
        runs, teachers = evaluate(step, cfg, pick(models, "teacher A", "teacher B"), out, wf.evaluation)
        refining = step.start(["train", config, "--workdir", ref, *sets, "--set", f"potential.checkpoint={pre}",
                              *(("--set", f"dipole.checkpoint={pre_dipole}") if learned else ())],
                              lambda: len(read_metrics(ref)) == cfg.train.iterations, pretraining)
        runs |= evaluate(step, cfg, pick(models, "pre-trained"), out, wf.evaluation, pretraining)[0]
        runs |= evaluate(step, cfg, pick(models, "refined"), out, wf.evaluation, [refining])[0]
        step.start(["plot", ref], (ref / "plots" / "loss.png").exists, [refining])
        # The force errors (in this process) start last: beside the refined model's simulate run with two
        # jobs, after every command with one (a GPU: this process then holds no device memory while one runs).
        errors = step.call(lambda: force_errors(models, runs, cfg), [*teachers, refining], "force errors")
        step.wait()
    obs = observables(runs)
    results = {
        "workflow": wf.config, "overrides": list(overrides), "dipole": cfg.dipole.model,
        "targets": [t.observable for t in cfg.targets],
        "bands": {m: {b: value(obs[m][f"ir_peak_{b}"]) for b in BANDS} for m in MODELS},
        "temperature_nve": {m: value(obs[m]["temperature_nve"]) for m in MODELS},
        "force_rmse": errors.result(),
        "refinement": refinement(ref), "loss_terms": loss_terms(ref), "commands": step.commands, "seconds": None,
    }
    results["band_moves"] = {b: band_move(results["bands"], b, "pre-trained", "refined", "teacher B") for b in BANDS}
    if learned:
        results["dipole_pretrain"] = _report(pre_dipole)
    results["figures"] = [plot_spectra(obs, cfg.targets[0].file, out / "figures" / "ir.png",
                                       dict(zip(MODELS, (":", "-.", "--", "-"))), "target (recorded spectrum of teacher B)",
                                       "IR spectrum of water: MPNN before and after refinement"),
                          plot_rdf(obs, out / "figures" / "rdf.png", MODELS)]
    results["rdf_error"] = {m: rdf_error(obs[m]["rdf"], obs["teacher B"]["rdf"]) for m in MODELS}
    # The refinement's loss judged on each model's independent run (32 windows instead of an iteration's 8
    # noisy ones), with its jackknife standard error: `simulate` computes it for the config's IR target.
    results["ir_loss"] = {m: value(obs[m]["ir_target_loss"]) for m in MODELS}
    results["ir_loss_fall"] = loss_fall(results["ir_loss"]["pre-trained"], results["ir_loss"]["refined"])
    return write_results(out, results, results_table, t0)


def rdf_error(g, reference):
    """integral of (g - g_ref)^2 dr (nm): the RDF target's loss per unit weight, from simulate's g(r)."""
    import numpy as np

    return float(np.trapezoid((np.asarray(g["value"]) - np.asarray(reference["value"])) ** 2, np.asarray(g["x"])))


def loss_fall(before, after):
    """How far the loss fell from `before` to `after` ({value, stderr} of two independent runs): the fall and
    its combined standard error."""
    import math

    return {"fell": before["value"] - after["value"], "stderr": math.hypot(before["stderr"], after["stderr"])}


def loss_terms(workdir):
    """Each iteration's loss terms ({target observable: weighted term})."""
    return [row["loss_terms"] for row in read_metrics(workdir)]


def _report(workdir):
    import json

    return json.loads((workdir / "pretrain_report.json").read_text())


def results_table(results):
    def band(entry):
        return f"{entry['value']:.1f} ± {entry['stderr']:.1f}"

    def loss(entry):
        return f"{entry['value']:.3g} ± {entry['stderr']:.2g}"

    lines = [f"# {results['workflow']} (dipole: {results['dipole']}; targets: {', '.join(results['targets'])})", "",
             "Band peaks (cm⁻¹), independent simulate runs (jackknife standard errors):", "",
             "| model | " + " | ".join(BANDS) + " | T NVE (K) |", "|---|" + "---|" * (len(BANDS) + 1)]
    lines += [f"| {m} | " + " | ".join(band(results["bands"][m][b]) for b in BANDS) +
              f" | {band(results['temperature_nve'][m])} |" for m in MODELS]
    lines += ["", "Moved from the pre-trained toward teacher B's peak: " + "; ".join(
        f"{b} {m['moved']:.1f} cm⁻¹ ({m['moved'] / m['stderr']:.1f} combined SE)" for b, m in results["band_moves"].items()
        if b != "libration") + ".", ""]
    if "dipole_pretrain" in results:
        d = results["dipole_pretrain"]
        lines += [f"Learned dipole, pre-trained on teacher A's dipoles: validation RMSE {d['val_dipole_rmse']:.3g} e nm "
                  f"per molecule ({d['val_dipole_rmse_debye']:.3g} D), {d['val_dipole_rmse_over_teacher_dipole_std']:.4f} "
                  "of the teacher's spread.", ""]
    lines += force_table(results["force_rmse"], MODELS)
    fall = results["ir_loss_fall"]
    lines += ["", "IR loss against the target (the config's regions and weight) of each independent run, jackknife "
              "standard errors: " + "; ".join(f"{m} {loss(results['ir_loss'][m])}" for m in MODELS) +
              f"; it fell by {fall['fell'] / fall['stderr']:.1f} combined SE from the pre-trained to the refined model."]
    lines += ["", "RDF against teacher B's, ∫(g − g_B)² dr (nm): " + "; ".join(
        f"{m} {results['rdf_error'][m]:.4g}" for m in MODELS if m != "teacher B") + "."]
    if len(results["targets"]) > 1:
        first, last = results["loss_terms"][0], results["loss_terms"][-1]
        lines += ["", "Loss terms, first → last iteration: " + "; ".join(
            f"{k} {first[k]:.4g} → {last[k]:.4g}" for k in first) + "."]
    lines += results_footer(results)
    return "\n".join(lines)
