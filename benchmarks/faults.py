"""The fault suite's property runs (issue 15): kills, preemption and rank death of real 1- and 2-process
training runs, each followed by the same command, which must end bit-identical to an uninterrupted run.
Writes one JSON object per trial and a summary; `--markdown` renders docs/reliability.md from it, with
the deterministic fault tests (bad input, numerical faults, damaged checkpoints) run through pytest.

Cases (every one on configs/tiny_argon_train.toml, LJ, and configs/tiny_argon_mpnn_train.toml, the MPNN):
  kill9-anytime    kill -9 of every process at a moment drawn uniformly over the uninterrupted run's
                   duration (mostly start-up, which is most of a tiny run)
  kill9-random     kill -9 of every process in the training loop: once k metrics rows exist (k drawn
                   from 1 .. iterations-1), after a delay drawn from 0 .. 1.5 iterations (sampling, the
                   gradient, a save: wherever it lands; recorded)
  kill9-save       kill -9 from inside the process as soon as an orbax save was started (async: mid-write)
  sigterm-PHASE-TO SIGTERM during start-up, sampling, the gradient or a save (a timer thread sends it while
                   that phase runs; for a save, at once after it started), to one process (rank 1) or
                   to all: every process must exit 3
  rank-death-R     kill -9 of rank R of two at a random moment after the first iteration: the survivor
                   must exit non-zero within 60 s; then both resume
Faults inside a process are injected by running it as `faults.py child` (this file): it wraps the trainer's
sampler, gradient and checkpoint save, then runs `dmd-dist` as usual.  Two processes start as `srun` would
(SLURM variables faked, as tests/integration/test_multiprocess.py does).

Usage: python benchmarks/faults.py [--seeds 10] [--first-seed 0] [--models lj,mpnn] [--processes 1,2] [--cases ...]
                                   [--json docs/reliability.jsonl] [--markdown docs/reliability.md]
"""

import argparse
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"lj": ROOT / "configs/tiny_argon_train.toml", "mpnn": ROOT / "configs/tiny_argon_mpnn_train.toml"}
LIMIT = 600  # seconds any one process may run
SURVIVOR_LIMIT = 60  # seconds within which the survivor of a rank death must exit
PHASES = ("startup", "sampling", "gradient", "save")


# ---------------------------------------------------------------------------------------------- the child

def child(argv):
    """Run `dmd-dist ARGV` with the fault DMD_FAULT = "KIND:PHASE:ITERATION" (KIND sigterm or kill9) injected
    into this process: the signal is sent by a timer thread while PHASE of that iteration runs."""
    kind, phase, iteration = os.environ["DMD_FAULT"].split(":")
    sig = signal.SIGTERM if kind == "sigterm" else signal.SIGKILL
    iteration = int(iteration)
    from dmd_dist import checkpoint
    from dmd_dist.cli import main
    from dmd_dist.train import trainer

    def fire(delay, where):
        print(f"FAULT {kind} during {where}", file=sys.stderr, flush=True)
        threading.Timer(delay, os.kill, (os.getpid(), sig)).start()

    state = {"iteration": 0, "fired": False}

    def once(where, delay):
        if not state["fired"]:
            state["fired"] = True
            fire(delay, where)

    if phase == "startup":
        build = trainer.build

        def build_with_fault(cfg):
            once("startup", 0.0)
            return build(cfg)
        trainer.build = build_with_fault
    elif phase in ("sampling", "gradient"):
        checked = trainer._checked_iteration

        def checked_with_fault(sample, value_and_grad, *args):
            state["iteration"] += 1
            if state["iteration"] == iteration:
                def sample_(*a):
                    if phase == "sampling":
                        once("sampling", 0.02)
                    return sample(*a)

                def value_and_grad_(*a):
                    if phase == "gradient":
                        once("gradient", 0.2)
                    return value_and_grad(*a)
                return checked(sample_, value_and_grad_, *args)
            return checked(sample, value_and_grad, *args)
        trainer._checked_iteration = checked_with_fault
    elif phase == "save":
        save = checkpoint.save

        def save_with_fault(mngr, step, *a, **k):
            save(mngr, step, *a, **k)  # asynchronous: the write goes on in orbax's threads
            if step == iteration and not state["fired"]:
                state["fired"] = True  # sent from here, not a timer, so that it lands while the write runs
                print(f"FAULT {kind} during save (in progress: {mngr.is_saving_in_progress()})", file=sys.stderr,
                      flush=True)
                os.kill(os.getpid(), sig)
        checkpoint.save = save_with_fault
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    return main(argv)


# --------------------------------------------------------------------------------------------- the parent

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=1")
    for k in list(env):
        if k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_", "DMD_FAULT")):
            del env[k]
    return env


def start(model, workdir, processes, faults=None):
    """Start the run's processes; `faults`: rank -> DMD_FAULT (those ranks run as `faults.py child`)."""
    faults = faults or {}
    port = free_port()
    procs = []
    for rank in range(processes):
        env = base_env()
        if processes > 1:
            env.update(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS=str(processes),
                       SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), JAX_COORDINATOR_PORT=str(port))
        args = ["train", str(CONFIGS[model]), "--workdir", str(workdir), "--set", "output.progress=false"]
        if rank in faults:
            env["DMD_FAULT"] = faults[rank]
            cmd = [sys.executable, __file__, "child", *args]
        else:
            cmd = [sys.executable, "-m", "dmd_dist", *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))
    return procs


def finish(procs, limit=LIMIT):
    """(exit codes, stderr tails); a process still running after `limit` s is killed and reported as None."""
    codes, errs = [], []
    for p in procs:
        try:
            _, err = p.communicate(timeout=limit)
            codes.append(p.returncode)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            codes.append(None)
        errs.append(err[-2000:])
    return codes, errs


def metrics(workdir):
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def saving(workdir):
    """Is an orbax save in flight (a temporary step directory exists)?"""
    ckpt = Path(workdir) / "checkpoints"
    return ckpt.is_dir() and any("tmp" in p.name for p in ckpt.iterdir())


def resume(model, workdir, processes, reference):
    codes, errs = finish(start(model, workdir, processes))
    same = [m["params_sha256"] for m in metrics(workdir)] == reference["sha"]
    return {"resume_codes": codes, "identical": codes == [0] * processes and same,
            **({} if codes == [0] * processes else {"resume_stderr": errs[0][-500:]})}


def reference_run(model, processes, scratch):
    work = Path(tempfile.mkdtemp(dir=scratch, prefix=f"reference-{model}-{processes}p-"))
    t0 = time.time()
    codes, errs = finish(start(model, work, processes))
    if codes != [0] * processes:
        raise RuntimeError(f"the uninterrupted {model} run on {processes} process(es) failed: {errs[0]}")
    rows = metrics(work)
    return {"seconds": time.time() - t0, "sha": [m["params_sha256"] for m in rows],
            "iteration_s": sum(m["seconds"] for m in rows[1:]) / max(1, len(rows) - 1)}


def kill9_random(model, processes, seed, reference, work, anytime=False):
    """kill -9 of every process: `anytime`, at a moment uniform over the uninterrupted run's duration (most
    land in start-up, which is most of a tiny run); else in the training loop: once k metrics rows exist (k
    uniform in 1 .. iterations-1), after a further delay uniform over 1.5 iterations (so also during saves)."""
    rng = random.Random(seed)
    procs = start(model, work, processes)
    t0 = time.time()
    if anytime:
        at = rng.uniform(0.0, reference["seconds"])
        while time.time() - t0 < at and all(p.poll() is None for p in procs):
            time.sleep(0.01)
    else:
        rows, delay = rng.randint(1, len(reference["sha"]) - 1), rng.uniform(0.0, 1.5 * reference["iteration_s"])
        while len(metrics(work)) < rows and all(p.poll() is None for p in procs) and time.time() - t0 < LIMIT:
            time.sleep(0.01)
        time.sleep(delay)
    at = time.time() - t0
    during_save, done = saving(work), len(metrics(work))
    for p in procs:
        p.send_signal(signal.SIGKILL)
    codes, _ = finish(procs)
    return {"kill_at_s": round(at, 2), "iterations_done": done, "during_save": during_save, "codes": codes,
            "ok": all(c in (-9, 0) for c in codes), **resume(model, work, processes, reference)}


def injected(kind, phase, to, model, processes, seed, reference, work):
    """A fault injected inside the process(es) at `phase` of an iteration drawn from the seed."""
    # Two later iterations remain: a signal that lands in iteration k (or, sent by the timer, only after its
    # stop check, or during its save) stops the run after k or k + 1, before the end, so it must exit 3.
    iteration = random.Random(seed).randint(1, len(reference["sha"]) - 2)
    ranks = range(processes) if to == "all" else [processes - 1]
    procs = start(model, work, processes, {r: f"{kind}:{phase}:{iteration}" for r in ranks})
    codes, errs = finish(procs)
    fired = all("FAULT" in errs[r] for r in ranks)
    if kind == "kill9":
        ok = fired and all(codes[r] == -9 for r in ranks) and None not in codes
    else:
        ok = fired and codes == [3] * processes
    return {"iteration": iteration, "fired": fired, "codes": codes, "ok": ok,
            "iterations_done": len(metrics(work)), **resume(model, work, processes, reference),
            **({} if ok else {"stderr": [e[-500:] for e in errs]})}


def rank_death(rank, model, seed, reference, work):
    rng = random.Random(seed)
    procs = start(model, work, 2)
    t0 = time.time()
    while len(metrics(work)) < 1 and all(p.poll() is None for p in procs) and time.time() - t0 < LIMIT:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 2.0))
    procs[rank].send_signal(signal.SIGKILL)
    t_kill = time.time()
    survivor = procs[1 - rank]
    try:
        _, err = survivor.communicate(timeout=3 * SURVIVOR_LIMIT)
        exit_s, code = time.time() - t_kill, survivor.returncode
    except subprocess.TimeoutExpired:
        survivor.kill()
        _, err = survivor.communicate()
        exit_s, code = None, None
    procs[rank].communicate()
    last = [line for line in err.strip().splitlines() if line.strip()][-1:] or [""]
    ok = code not in (0, None) and exit_s is not None and exit_s <= SURVIVOR_LIMIT
    return {"killed_rank": rank, "survivor_code": code, "survivor_exit_s": None if exit_s is None else round(exit_s, 1),
            "survivor_last_line": last[0][-300:], "ok": ok, **resume(model, work, 2, reference)}


def trial(case, model, processes, seed, reference, work):
    """One trial of `case` (see the module docstring) in the empty directory `work`."""
    if case in ("kill9-random", "kill9-anytime"):
        return kill9_random(model, processes, seed, reference, work, anytime=case == "kill9-anytime")
    if case == "kill9-save":
        return injected("kill9", "save", "all", model, processes, seed, reference, work)
    if case.startswith("sigterm-"):
        _, phase, to = case.split("-")
        return injected("sigterm", phase, to, model, processes, seed, reference, work)
    if case.startswith("rank-death-"):
        return rank_death(int(case.rsplit("-", 1)[1]), model, seed, reference, work)
    raise SystemExit(f"unknown case {case!r}")


def cases_for(cases, processes):
    """The cases that apply to runs of `processes` processes (rank death and "to one" need two)."""
    return [c for c in cases if processes > 1 or not (c.startswith("rank-death") or c.endswith("-one"))]


def trials(args, scratch):
    if not args.cases:
        return
    for model in args.models:
        for processes in args.processes:
            reference = reference_run(model, processes, scratch)
            yield {"case": "reference", "model": model, "processes": processes, "seconds": round(reference["seconds"], 1),
                   "iterations": len(reference["sha"]), "command": " ".join(["python", "benchmarks/faults.py", *sys.argv[1:]])}
            for case in cases_for(args.cases, processes):
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    work = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{case}-{model}-{processes}p-{seed}-"))
                    t0 = time.time()
                    r = trial(case, model, processes, seed, reference, work)
                    yield {"case": case, "model": model, "processes": processes, "seed": seed,
                           "seconds": round(time.time() - t0, 1), **r}


# The deterministic fault tests: each case once, as CI runs them.
PYTEST_FILES = ("tests/test_bad_input.py", "tests/test_numerical_faults.py", "tests/test_checkpoint.py",
                "tests/test_objective.py", "tests/test_train.py", "tests/test_pretrain.py", "tests/test_parallel.py",
                "tests/integration/test_multiprocess.py", "tests/integration/test_rank_death.py",
                "tests/integration/test_two_jobs.py")
PYTEST_KEYWORDS = ("bad_input", "bad_distributed", "non_finite", "blow_up", "every_segment", "backward_pass",
                   "unreadable", "cut_off", "damaged", "killed", "sigterm", "refused", "listens", "peer_lost",
                   "stay_apart")


def pytest_outcomes(scratch, junit=None):
    """One row per deterministic fault test: from `junit` (the XML report of a suite run, e.g.
    `bash launch/test.sh --junitxml=FILE`), or from a pytest run of just those tests."""
    import xml.etree.ElementTree as ET

    if junit is None:
        junit = Path(scratch) / "pytest.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                        " or ".join(PYTEST_KEYWORDS), f"--junitxml={junit}", *PYTEST_FILES], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        file = case.get("classname").replace(".", "/") + ".py"
        name = case.get("name")
        if file not in PYTEST_FILES or not any(k in f"{file}::{name}" for k in PYTEST_KEYWORDS):
            continue
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        rows.append({"case": "pytest", "file": file, "test": name, "seconds": round(float(case.get("time", 0)), 1),
                     "ok": not failed and not skipped, "identical": True,
                     "outcome": "failed" if failed else "skipped" if skipped else "passed"})
    return rows


def passed(row):
    return row["case"] == "reference" or (row["ok"] and row["identical"])


BEHAVIOUR = """## What a run does about each fault

| fault | what happens | exit code |
|---|---|---|
| bad config, structure, target file, command line, resume mismatch | one line `error: KEY: PROBLEM`; nothing created or overwritten | 2 |
| SIGTERM / SIGUSR1 (any process, any phase, also during start-up or a save) | every process finishes the iteration in flight, one checkpoint is saved, all stop | 3 |
| kill -9 (any moment, also during an orbax save) | nothing to do at the kill: orbax commits a step atomically; the rerun resumes from the newest complete step, drops metrics rows past it (a line cut mid-write too), removes the half-written step's temporary directory | -9, then 0 |
| latest checkpoint unreadable (files cut short or deleted) | passed over with a warning for the step before it, then deleted so that it can be saved again | 0 |
| a segment goes non-finite | masked out of the loss and of the gradient (its gradient is zeroed, not 0 x NaN), counted in `masked_replicas` | 0 |
| a replica chain goes non-finite while sampling | its segments masked; the chain restarts from its state before the iteration with fresh noise; `restarted_chains` | 0 |
| a segment blows up with finite numbers (E = U + K strays by more than `segments.max_energy_error`, where set) | masked and counted like a non-finite one; its chain restarts from its state before the iteration with fresh noise | 0 |
| no finite loss and gradient (every segment failed, or the gradient did) | update not applied (`update_skipped`); every chain restarts from its state before the iteration with fresh noise (`restarted_chains`), so a chain that wandered where the potential misbehaves does not hand on the same frames; checkpoints never hold a non-finite parameter; `train.max_failed_iterations` in a row stop the run | 4 |
| another process of the run is lost (kill -9 of a rank, a dead node) | the others exit within `distributed.heartbeat_timeout` (30 s), naming it, or are aborted by jax.distributed (SIGABRT, jax's line); rerunning every process resumes from the last checkpoint | 5 or SIGABRT |
| two jobs on one node | each job's coordinator has its own port (per job id under SLURM, a free port chosen by rank 0 under MPI) and listens on the node's own address | 0 |
| neighbour list overflow (sampling, forward, backward) | lists re-allocated larger and the work redone; `neighbor_reallocations` | 0 |
""".splitlines() + [""]


def render(rows):
    """docs/reliability.md from the trial rows."""
    lines = ["# Reliability: the fault suite's results", "",
             "Rendered by `python benchmarks/faults.py --markdown docs/reliability.md --json docs/reliability.jsonl` "
             "from the trials in docs/reliability.jsonl (one JSON object per line); every number below comes from "
             "that file.  A trial passes when every process ends as the case demands and the resumed run's parameters are bit-identical "
             "(params_sha256 of every iteration) to an uninterrupted run's.  The same matrix, with 10 seeds per "
             "case: `pytest -m faults_long tests/integration/test_fault_matrix.py` (hours on 2 cores).", ""]
    lines += BEHAVIOUR
    legend = __doc__[__doc__.index("Cases"):__doc__.index("Faults inside")].rstrip().splitlines()[1:]
    lines += ["Cases:", "", "```", *legend, "```", ""]
    superseded = [r for r in rows if "superseded" in r]  # trials of an earlier case definition, kept and named
    rows = [r for r in rows if "superseded" not in r]
    refs = [r for r in rows if r["case"] == "reference"]
    trials_ = [r for r in rows if r["case"] not in ("reference", "pytest")]
    if trials_:
        lines += ["## Property runs (real processes, random moments or injected faults)", "",
                  "| case | model | processes | trials | passed | notes |", "|---|---|---:|---:|---:|---|"]
        groups = {}
        for r in trials_:
            groups.setdefault((r["case"], r["model"], r["processes"]), []).append(r)
        order = {c: i for i, c in enumerate(ALL_CASES)}
        for (case, model, processes), rs in sorted(groups.items(), key=lambda g: (g[0][1], g[0][2], order[g[0][0]])):
            notes = []
            if case.startswith("kill9-") and case != "kill9-save":
                notes.append(f"{sum(r['during_save'] for r in rs)} kill(s) during a save; iterations done at the "
                             f"kill: {sorted(r['iterations_done'] for r in rs)}")
            if case.startswith("rank-death"):
                times = [r["survivor_exit_s"] for r in rs]
                notes.append(f"survivor exit after {', '.join('hung' if t is None else f'{t:g}' for t in times)} s; "
                             f"codes {sorted(set(str(r['survivor_code']) for r in rs))}")
            if case.startswith(("sigterm", "kill9-save")):
                at = "" if "startup" in case else f"fault at iteration {sorted(r['iteration'] for r in rs)}; "
                notes.append(f"{at}exit codes {sorted(set(str(r['codes']) for r in rs))}")
            lines.append(f"| {case} | {model} | {processes} | {len(rs)} | {sum(passed(r) for r in rs)} | "
                         f"{'; '.join(notes)} |")
        commands = sorted({r["command"] for r in refs if "command" in r})
        if commands:
            lines += ["", "The trials ran as:", "", "```", *commands, "```"]
        if refs:
            lines += ["", "Uninterrupted reference runs: " + ", ".join(
                f"{r['model']} on {r['processes']} process(es) {r['seconds']:g} s ({r['iterations']} iterations)"
                for r in refs) + "."]
    for r in superseded:
        lines += ["", f"Not counted: {r['case']} ({r['model']}, {r['processes']} process(es), seed {r['seed']}): "
                  f"exit codes {r['codes']}, resumed identical: {r['identical']}. {r['superseded']}"]
    tests = [r for r in rows if r["case"] == "pytest"]
    if tests:
        sources = sorted({r.get("source", "pytest") for r in tests})
        lines += ["", "## Deterministic fault tests (pytest; CI runs every one of them)", "",
                  f"From {'; '.join(sources)}: {sum(r['outcome'] == 'passed' for r in tests)} of {len(tests)} passed.",
                  "", "| file | test | outcome | seconds |", "|---|---|---|---:|"]
        lines += [f"| {r['file']} | `{r['test']}` | {r['outcome']} | {r['seconds']:g} |" for r in tests]
    return "\n".join(lines) + "\n"


ALL_CASES = (["kill9-anytime", "kill9-random", "kill9-save"] + [f"sigterm-{p}-{to}" for p in PHASES for to in ("all", "one")]
             + ["rank-death-0", "rank-death-1"])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="trials per case")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (to add trials to a record)")
    p.add_argument("--models", type=lambda s: s.split(","), default=["lj", "mpnn"])
    p.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    p.add_argument("--cases", type=lambda s: [c for c in s.split(",") if c], default=ALL_CASES,
                   help="comma-separated; empty: no property runs (with --pytest: the pytest outcomes only)")
    p.add_argument("--json", type=Path, help="append every trial to this JSON-lines file")
    p.add_argument("--pytest", action="store_true", help="also run the deterministic fault tests (pytest) and "
                   "record each outcome")
    p.add_argument("--junit", type=Path, help="with --pytest: take the outcomes from this pytest XML report instead")
    p.add_argument("--source", default="a pytest run of those tests", help="with --pytest: where the outcomes "
                   "come from, for the report")
    p.add_argument("--markdown", type=Path, help="render this reliability table from --json (no trials run)")
    args = p.parse_args()
    if args.markdown:
        args.markdown.write_text(render([json.loads(line) for line in args.json.read_text().splitlines()]))
        return 0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="dmd-faults-") as scratch:
        rows = [r | {"source": args.source} for r in pytest_outcomes(scratch, args.junit)] if args.pytest else []
        for row in itertools.chain(rows, trials(args, scratch)):  # each trial reported as it ends
            failed += not passed(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(line + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
