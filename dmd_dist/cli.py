"""The `dmd-dist` command line: parse, load the config, call library functions.

Exit codes: 0 done; 2 bad input (one line `error: KEY: PROBLEM`, nothing created); 3 stopped by a
preemption signal after saving a checkpoint (rerun the same command to resume); 4 training stopped after
`train.max_failed_iterations` numerically failed iterations in a row (checkpoints hold the last finite
parameters); 5 another process of a multi-process run is gone (one line naming it; rerun every process to
resume from the last checkpoint); 1 anything else.  A process that jax.distributed itself ends when a peer
is lost dies of SIGABRT (exit status 134 from a shell) after jax's own "Terminating process ..." line
(train/parallel.py).
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from dmd_dist.errors import Diverged, InputError


class _Parser(argparse.ArgumentParser):
    """Command-line misuse gets the one line every bad input gets (exit code 2), with a pointer to --help."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def positive(text):
    """argparse type: a number > 0 (argparse names it in its message: "invalid positive value")."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _parser():
    from dmd_dist import __version__

    p = _Parser(prog="dmd-dist", description="Refine interatomic potentials against dynamical "
                                "observables by differentiable molecular dynamics.")
    p.add_argument("--version", action="version", version=f"dmd-dist {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name, help, workdir):
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("config", metavar="CONFIG", help="TOML configuration file")
        if workdir:
            s.add_argument("--workdir", required=True, help="run directory (created if missing)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set segments.steps=200 (repeatable)")
        return s

    with_config("validate", "check a config and print the resolved one", workdir=False)
    with_config("simulate", "forward-only run: NVT sampling, NVE segments, observables.json", workdir=True)
    with_config("train", "train the potential against the config's targets; rerun to resume", workdir=True)
    with_config("pretrain", "energy and force matching of the MPNN to a teacher potential's samples or an "
                "extxyz file; rerun to resume", workdir=True)
    pl = sub.add_parser("plot", help="PNG figures of a run directory (loss, parameters, observables vs "
                        "targets, curves)", description="PNG figures of a run directory into DIR/plots")
    pl.add_argument("workdir", metavar="DIR", help="a train or simulate run directory")
    g = with_config("gradcheck", "adjoint gradient vs direct backprop, checkpointing and finite differences; "
                    "prints JSON", workdir=False)
    g.add_argument("--fd-step", type=positive, default=None, help="relative finite-difference step "
                   "(default 1e-5 in float64, 3e-3 in float32)")
    g.add_argument("--fd-max", type=int, default=8, help="finite differences for at most this many parameters "
                   "(the largest adjoint gradients; default 8)")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "plot":
            return _plot(Path(args.workdir))
        from dmd_dist.config import dump_config, load_config

        cfg = load_config(args.config, args.overrides)
        if args.command == "validate":
            print(dump_config(cfg), end="")
            return 0
        if args.command == "gradcheck":
            import json

            from dmd_dist.gradcheck import gradcheck

            print(json.dumps(gradcheck(cfg, args.fd_step, args.fd_max), indent=2))
            return 0
        workdir = Path(args.workdir)
        check_workdir(args.command, workdir)
        if args.command in ("train", "pretrain"):
            from dmd_dist.train.preemption import Preempted, StopFlag

            # From here on a preemption signal is remembered, not fatal: one that arrives while the
            # processes connect or compile stops the run before its first iteration, with exit code 3.
            with StopFlag():
                try:
                    run_training(args.command, cfg, workdir)
                except Preempted as e:  # a checkpoint was saved (or nothing had started): rerun to resume
                    print(str(e), file=sys.stderr)
                    return 3
                except Exception as e:
                    from dmd_dist.train.parallel import EXIT_PEER_LOST, peer_lost

                    lost = peer_lost(e)
                    if lost is None:
                        raise
                    print(f"error: {lost}", file=sys.stderr, flush=True)
                    # Not a normal exit: jax.distributed's shutdown at exit would wait in a barrier for the
                    # lost process until the heartbeat timeout, then abort.
                    os._exit(EXIT_PEER_LOST)
            return 0
        start_command(cfg, workdir, lead=True)
        from dmd_dist.simulate import simulate

        simulate(cfg, workdir)
        return 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 4


# Files only `simulate`, or only `train` and `pretrain`, write: a --workdir holding the other's run is refused
# before anything is written (train and pretrain refuse each other's checkpoints: checkpoint.resume_point).
SIMULATE_FILES, TRAINING_FILES = ("observables.json",), ("metrics.jsonl", "checkpoints")


def check_workdir(command, workdir: Path):
    """Refuse a --workdir that is a file or holds another command's run."""
    if workdir.exists() and not workdir.is_dir():
        raise InputError("--workdir", f"{workdir} exists and is not a directory")
    other, files = ("train or pretrain", TRAINING_FILES) if command == "simulate" else ("simulate", SIMULATE_FILES)
    found = [f for f in files if (workdir / f).exists()]
    if found:
        raise InputError("--workdir", f"{workdir} holds a {other} run ({found[0]}); give a new directory")


def start_command(cfg, workdir: Path, lead):
    """Logging to the workdir (the lead process only) and the compilation cache."""
    setup_logging(workdir, lead)
    from dmd_dist.compilation_cache import use_compilation_cache

    cache = use_compilation_cache(cfg.output.compilation_cache)
    logging.getLogger("dmd_dist").debug("compilation cache: %s", cache)


def run_training(command, cfg, workdir: Path):
    """`train` (after joining the other processes, if any) or `pretrain`."""
    from dmd_dist.train.preemption import StopFlag

    lead = True
    if command == "train":
        import jax

        from dmd_dist.train.parallel import initialize

        mode = initialize(cfg.distributed)  # before anything touches a device
        lead = jax.process_index() == 0
    with StopFlag():  # the signals back from jax.distributed's own handler (see StopFlag)
        start_command(cfg, workdir, lead)
        if command == "train" and mode != "local":
            from dmd_dist.train import parallel

            logging.getLogger("dmd_dist").info("process %d of %d; coordinator service listening on %s",
                                               jax.process_index(), jax.process_count(),
                                               parallel.listening or "every interface")
        if command == "train":
            from dmd_dist.train.trainer import train as run
        else:
            from dmd_dist.train.pretrain import pretrain as run
        run(cfg, workdir)


def _plot(workdir: Path):
    """Figures from what a run wrote: metrics.jsonl (train) and observables.json curves (simulate)."""
    import json

    from dmd_dist.losses import read_curve
    from dmd_dist.plots import plot_curves, plot_training
    from dmd_dist.config import load_config

    if not (workdir / "config.toml").is_file():
        raise InputError("DIR", f"{workdir} is not a run directory (no config.toml)")
    cfg = load_config(workdir / "config.toml")
    scalar_targets = {t.observable: t.value for t in cfg.targets if t.value is not None}
    curve_targets = {t.observable: read_curve(t.file, f"targets.{i}.file") for i, t in enumerate(cfg.targets)
                     if t.file is not None}
    paths = plot_training(workdir, scalar_targets)
    if (workdir / "observables.json").is_file():
        paths += plot_curves(json.loads((workdir / "observables.json").read_text()), workdir / "plots", curve_targets)
    if not paths:
        raise InputError("DIR", f"{workdir} has neither metrics.jsonl nor observables.json to plot")
    for p in paths:
        print(p)
    return 0


def setup_logging(workdir: Path, lead=True):
    """Log to stderr now; the command creates the workdir, and log.txt is attached once it exists.
    Processes other than the first (`lead`) only report warnings, and only to stderr."""
    logger = logging.getLogger("dmd_dist")
    logger.setLevel(logging.INFO if lead else logging.WARNING)
    logger.propagate = False  # orbax (absl) installs a root handler: do not print every line twice
    if not logger.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(h)
    if lead:
        logger.addHandler(_DeferredFileHandler(workdir / "log.txt"))


class _DeferredFileHandler(logging.Handler):
    """Appends to a file once its directory exists, so bad input never creates the run directory."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s"))

    def emit(self, record):
        if self.path.parent.is_dir():
            with open(self.path, "a") as f:
                f.write(self.format(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
