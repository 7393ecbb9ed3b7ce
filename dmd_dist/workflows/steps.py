"""What every workflow is made of: `dmd-dist` commands run as subprocesses of the CLI (so every step leaves
the run directory and log of the command a user would type), each skipped when its output exists, and the
exact commands kept for the results."""

import codecs
import json
import logging
import re
import shlex
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor, wait
from importlib.metadata import entry_points
from pathlib import Path

log = logging.getLogger("dmd_dist")


class StepFailed(RuntimeError):
    """A command of the workflow failed (its own message is above); rerunning continues from it."""


def default_jobs():
    """How many commands a workflow runs side by side by default: 2 where JAX has no accelerator plugin
    installed (CPU: compiling is single-threaded, so two commands use both cores of a small machine), else 1
    (two processes on one GPU would each try to take most of its memory)."""
    return 1 if entry_points(group="jax_plugins") else 2


# XLA:CPU logs this error-level line for every program it loads from a compilation cache: a tuning feature
# of the compiling machine missing from the host's list (openxla/xla#44565, compilation_cache.py); the
# program is fine, and a workflow's commands load hundreds.
BENIGN = re.compile(rb"^E\d{4} [^\n]*cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. Target machine feature "
                    rb"\+prefer-no-(gather|scatter) is not +supported on the host machine\.")


def forward_stderr(source, sink):
    """Copy a command's stderr (a binary pipe) to the text stream `sink` as it comes, without the BENIGN
    lines; a partial line passes at once (progress bars end in a carriage return) unless it may be one."""
    pending, text = b"", codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end mid-character
    while chunk := source.read1(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not BENIGN.match(line))
        if not pending.startswith(b"E"):
            out, pending = out + pending, b""
        sink.write(text.decode(out))
        sink.flush()
    if pending and not BENIGN.match(pending):
        sink.write(text.decode(pending, final=True))
        sink.flush()


class Steps:
    """Runs `dmd-dist` commands; `commands` lists them all, run or skipped, as a user would type them, in an
    order that also works one by one.  `start` runs a command once the commands it comes `after` have ended,
    up to `jobs` at once (default: `default_jobs()`; first started, first run: start a command only after
    those it waits for).  `env`: the environment of the commands; `progress`: their progress bars (off when
    `jobs` > 1, where several bars would share one terminal).  Use it in a `with` block: leaving it by an
    exception starts no further command and waits for the running ones."""

    def __init__(self, env=None, progress=True, jobs=None):
        jobs = jobs or default_jobs()
        self.env, self.progress, self.commands = env, progress and jobs == 1, []
        self._pool, self._started, self._stopping = ThreadPoolExecutor(jobs, thread_name_prefix="step"), [], False

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self._stopping = kind is not None
        self._pool.shutdown(wait=True, cancel_futures=self._stopping)

    def start(self, args, done, after=()):
        """Run `dmd-dist ARGS` after the steps `after` (futures of `start`) unless `done()` then says its
        output is complete; returns the step's future."""
        command = " ".join(shlex.quote(str(a)) for a in ["dmd-dist", *args])
        self.commands.append(command)

        def run():
            if done():
                log.info("skip (done): %s", command)
                return
            log.info("run: %s", command)
            quiet = [] if self.progress or args[0] == "plot" else ["--set", "output.progress=false"]
            proc = subprocess.Popen([sys.executable, "-m", "dmd_dist", *map(str, args), *quiet], env=self.env,
                                    stderr=subprocess.PIPE)
            forward_stderr(proc.stderr, sys.stderr)
            if proc.wait():
                raise StepFailed(f"exit code {proc.returncode} from: {command}")

        return self._submit(run, after, command)

    def call(self, fn, after=(), name=None):
        """Run the workflow's own `fn()` (an evaluation in this process) after the steps `after`, in a slot
        of its own like a command, so it overlaps the commands still running; returns a future of its value."""
        return self._submit(fn, after, name or fn.__name__)

    def _submit(self, fn, after, name):
        def run():
            for f in after:
                f.result()  # a failed step fails the steps after it
            if self._stopping:
                raise StepFailed(f"not run (the workflow stopped): {name}")
            return fn()

        self._started.append(self._pool.submit(run))
        return self._started[-1]

    def wait(self):
        """Wait for every started step; raises the first failure (in the order started) after all have ended."""
        wait(self._started)
        for f in self._started:
            f.result()


def evaluate(step, cfg, models, out, overrides=(), after=()):
    """Start one independent `simulate` run per model, after the steps `after`: the config `cfg` with each
    entry of `models` (name -> {section: table}, a [potential] and maybe a [dipole]) in place of its
    sections, written to out/evaluate/NAME.toml and run with `overrides` ("key=value").  Returns {name: run
    directory}, which `observables` reads after `step.wait()`, and the runs' steps (for steps after them)."""
    import tomli_w

    from dmd_dist.config import dump_config

    data = tomllib.loads(dump_config(cfg))
    runs, started = {}, []
    for name, sections in models.items():
        slug = name.replace(" ", "_").replace("-", "_").lower()
        path, runs[name] = out / "evaluate" / f"{slug}.toml", out / "evaluate" / slug
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(data | sections))  # checked by the command (a checkpoint may not exist yet)
        started.append(step.start(["simulate", path, "--workdir", runs[name], *[a for o in overrides for a in ("--set", o)]],
                                  (runs[name] / "observables.json").exists, after))
    return runs, started


def pick(models, *names):
    """The entries `names` of `models`, in that order."""
    return {name: models[name] for name in names}


def observables(runs):
    """{name: observables.json} of the `simulate` run directories `runs` ({name: directory})."""
    return {name: json.loads((d / "observables.json").read_text()) for name, d in runs.items()}


def force_errors(models, runs, cfg, teachers=("teacher A", "teacher B")):
    """RMS force differences (kJ/mol/nm) of every model against every teacher, on the start frames that
    each teacher's own `simulate` run sampled (its trajectory.extxyz): {frames of: {model: {vs: rmse}}}.
    `models`: name -> {"potential": table, ...}, as for `evaluate`."""
    import ase.io
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dmd_dist.assemble import build_potential, build_system, set_precision

    set_precision(cfg.precision)
    system = build_system(cfg, jax.random.PRNGKey(0))  # topology and box; positions come from the frames
    built = {name: build_potential(cfg.model_copy(update={"potential": type(cfg.potential)(**m["potential"])}), system)
             for name, m in models.items()}
    frames = {t: jnp.asarray(np.stack([a.positions for a in ase.io.read(runs[t] / "trajectory.extxyz", ":")]) / 10.0,
                             system.positions.dtype) for t in teachers}  # A -> nm
    every_frame, sizes = jnp.concatenate(list(frames.values())), [len(x) for x in frames.values()]
    per_teacher = {}  # model -> its forces on each teacher's frames
    for name, (pot, params) in built.items():
        # One list capacity for every frame of both teachers, and the frames vmapped: one compilation per
        # model (a list sized per frame compiled a program per distinct size: 110 compilations, 70 s).
        force = jax.jit(jax.vmap(pot.forces, in_axes=(None, 0, 0)))
        nbrs = pot.neighbors.allocate(every_frame)
        per_teacher[name] = np.split(np.asarray(force(params, every_frame, nbrs)), np.cumsum(sizes)[:-1])
    out = {}
    for k, teacher in enumerate(teachers):
        forces = {name: f[k] for name, f in per_teacher.items()}
        out[f"frames of {teacher}"] = {
            name: {f"vs {t}": float(np.sqrt(np.mean((forces[name] - forces[t]) ** 2))) for t in teachers}
            for name in models}
        out[f"frames of {teacher}"]["teacher force RMS"] = float(np.sqrt(np.mean(forces[teacher] ** 2)))
    return out


def force_table(force_rmse, models):
    """results.md lines of `force_errors`."""
    lines = ["Force RMSE (kJ/mol/nm) on each teacher's own start frames:", "",
             "| frames | model | vs teacher A | vs teacher B |", "|---|---|---|---|"]
    for frames, rows in force_rmse.items():
        lines += [f"| {frames} | {m} | {rows[m]['vs teacher A']:.3f} | {rows[m]['vs teacher B']:.3f} |" for m in models]
        lines.append(f"| {frames} | (RMS force of the teacher) | {rows['teacher force RMS']:.2f} | |")
    return lines


def plot_rdf(obs, path, models):
    """g(r) of the four models of a teacher A / teacher B / pre-trained / refined workflow."""
    from dmd_dist.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, style in zip(models, (":", "k-", "--", "-")):
        g = obs[name]["rdf"]
        ax.plot(g["x"], g["value"], style, lw=1.2 if name != "teacher B" else 2.0, label=name)
    ax.set_xlabel("r (nm)")
    ax.set_ylabel("g(r)")
    ax.set_title("radial distribution function")
    return save_figure(fig, path, ax)


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


def value(entry):
    """An observables.json entry's value and standard error."""
    return {"value": entry["value"], "stderr": entry["stderr"]}


def refinement(workdir):
    """The train run's iterations, first and last loss, seconds spent in iterations, and the iterations whose
    update the trainer skipped (a non-finite loss or gradient: the parameters stayed where they were)."""
    from dmd_dist.plots import read_metrics

    rows = read_metrics(workdir)
    return {"iterations": len(rows), "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
            "seconds": sum(r["seconds"] for r in rows),
            "updates_skipped": [r["iteration"] for r in rows if r.get("update_skipped")]}


def results_footer(results):
    """The closing lines of a workflow's results.md: the refinement's cost and the exact commands."""
    r = results["refinement"]
    skipped = r.get("updates_skipped")
    skipped = (f" (update skipped at iteration {', '.join(map(str, skipped))}: a non-finite loss or gradient, the "
               "parameters kept; see the train run's log)") if skipped else ""
    return ["", f"Refinement: {r['iterations']} iterations, loss {r['loss_first']:.4g} → {r['loss_last']:.4g}{skipped}, "
            f"{r['seconds']:.0f} s of training iterations; this invocation of the workflow {results['seconds']:.0f} s "
            "(steps found done are skipped).", "", "Commands:", "", "```", *results["commands"], "```", ""]
