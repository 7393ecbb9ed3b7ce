"""What every workflow is made of: `dmd-dist` commands run as subprocesses of the CLI (so every step leaves
the run directory and log of the command a user would type), each skipped when its output exists, and the
exact commands kept for the results."""

import json
import logging
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

log = logging.getLogger("dmd_dist")


class StepFailed(RuntimeError):
    """A command of the workflow failed (its own message is above); rerunning continues from it."""


class Steps:
    """Runs `dmd-dist` commands in order; `commands` lists them all, run or skipped, as a user would type them.
    `env`: the environment of the commands; `progress`: their progress bars."""

    def __init__(self, env=None, progress=True):
        self.env, self.progress, self.commands = env, progress, []

    def __call__(self, args, done):
        """Run `dmd-dist ARGS` unless `done()` says its output is complete."""
        self.commands.append(" ".join(shlex.quote(str(a)) for a in ["dmd-dist", *args]))
        if done():
            log.info("skip (done): %s", self.commands[-1])
            return
        log.info("run: %s", self.commands[-1])
        quiet = [] if self.progress or args[0] == "plot" else ["--set", "output.progress=false"]
        r = subprocess.run([sys.executable, "-m", "dmd_dist", *map(str, args), *quiet], env=self.env)
        if r.returncode:
            raise StepFailed(f"exit code {r.returncode} from: {self.commands[-1]}")


def evaluate(step, cfg, potentials, out, overrides=()):
    """One independent `simulate` run per model: the config `cfg` with each entry of `potentials` (name ->
    [potential] table) as its potential, written to out/evaluate/NAME.toml and run with `overrides`
    ("key=value"); returns ({name: run directory}, {name: its observables.json})."""
    from dmd_dist.config import dump_config

    data = tomllib.loads(dump_config(cfg))
    runs = {}
    for name, potential in potentials.items():
        slug = name.replace(" ", "_").replace("-", "_").lower()
        path, runs[name] = out / "evaluate" / f"{slug}.toml", out / "evaluate" / slug
        write_config(data | {"potential": potential}, path)
        step(["simulate", path, "--workdir", runs[name], *[a for o in overrides for a in ("--set", o)]],
             (runs[name] / "observables.json").exists)
    return runs, {name: json.loads((d / "observables.json").read_text()) for name, d in runs.items()}


def write_results(out, results, table, t0):
    """Finish `results` (figures relative to `out`, wall seconds since `t0`) and write results.json and
    results.md (`table(results)`)."""
    import time

    results["figures"] = [str(Path(f).relative_to(out)) for f in results["figures"]]
    results["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table(results))
    log.info("results: %s", out / "results.md")
    return results


def write_config(data, path):
    """A config file from a TOML dict, checked by loading it back (bad input stops before any step runs)."""
    import tomli_w

    from dmd_dist.config import load_config

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    load_config(path)


def value(entry):
    """An observables.json entry's value and standard error."""
    return {"value": entry["value"], "stderr": entry["stderr"]}


def refinement(workdir):
    """The train run's iterations, first and last loss, and seconds spent in iterations."""
    from dmd_dist.plots import read_metrics

    rows = read_metrics(workdir)
    return {"iterations": len(rows), "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
            "seconds": sum(r["seconds"] for r in rows)}


def results_footer(results):
    """The closing lines of a workflow's results.md: the refinement's cost and the exact commands."""
    r = results["refinement"]
    return ["", f"Refinement: {r['iterations']} iterations, loss {r['loss_first']:.4g} → {r['loss_last']:.4g}, "
            f"{r['seconds']:.0f} s of training iterations; this invocation of the workflow {results['seconds']:.0f} s "
            "(steps found done are skipped).", "", "Commands:", "", "```", *results["commands"], "```", ""]
