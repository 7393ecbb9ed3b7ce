"""Bad input to every command (issue 15): each case exits with code 2 and one line `error: KEY: PROBLEM`
naming the key or file, prints no traceback, creates no run directory and leaves every file it was given
untouched (the whole case directory, and the shared finished run, are hashed before and after).

The commands run in-process through `cli.main`, as the `dmd-dist` entry point runs them, so the whole table
costs seconds; one case needs two devices and runs as a subprocess.  A real, finished one-iteration train
run of the base config (`finished_run`) stands in for "a run directory" where a case needs one."""

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmd_dist.cli import main

ROOT = Path(__file__).resolve().parents[1]

# A valid, tiny LJ config: every case breaks one thing of it.
BASE = """seed = 0
[system]
kind = "lj_fluid"
element = "Ar"
n_atoms = 16
box = 1.6
equilibration_steps = 20
[potential]
sigma = 0.34
epsilon = 1.0
cutoff = 0.75
[sampling]
temperature = 94.4
equilibration_steps = 10
steps_between_frames = 10
frames = 1
[segments]
steps = 20
record_every = 2
[[targets]]
observable = "diffusion"
value = 0.0025
[train]
iterations = 1
[output]
progress = false
trajectory = false
"""
XYZ_HEADER = 'Lattice="16.0 0.0 0.0 0.0 16.0 0.0 0.0 0.0 16.0" Properties=species:S:1:pos:R:3 pbc="T T T"'
STRUCTURE = {"system": 'kind = "file"\npath = "s.extxyz"\nequilibration_steps = 20'}
CURVE = 'observable = "vacf"\nfile = "t.txt"'


def config(replace=None, append=""):
    """BASE with whole sections replaced ({"system": "key = value lines"}) and text appended."""
    text = BASE
    for section, body in (replace or {}).items():
        start = text.index(f"[{section}]\n") + len(section) + 3
        end = text.find("\n[", start)
        text = text[:start] + body + "\n" + text[end + 1:]
    return text + append


def xyz(*positions):
    return "\n".join([str(len(positions)), XYZ_HEADER, *(f"Ar {x} {y} {z}" for x, y, z in positions)]) + "\n"


GRID = [(1.0, 1.0, 1.0), (5.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 5.0)]

# name: (files {name: text or bytes} written into the case directory, the command line ({d}: the case
# directory, {run}: the shared finished train run), words the one error line must contain)
CASES = {
    # the config file itself
    "TOML syntax": ({"c.toml": "seed = \n[system"}, ["validate", "{d}/c.toml"], "TOML syntax error"),
    "duplicate key": ({"c.toml": BASE.replace("seed = 0", "seed = 0\nseed = 1")}, ["simulate", "{d}/c.toml",
                      "--workdir", "{d}/run"], "TOML syntax error"),
    "missing config": ({}, ["train", "{d}/nope.toml", "--workdir", "{d}/run"], "no such file"),
    "empty config": ({"c.toml": ""}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run"], "system"),
    "binary config": ({"c.toml": b"\x00\xff\xfe\x01binary"}, ["pretrain", "{d}/c.toml", "--workdir", "{d}/run"],
                      "c.toml"),
    "config is a directory": ({"c.toml/x": "x"}, ["train", "{d}/c.toml", "--workdir", "{d}/run"], "c.toml"),
    "unknown key": ({"c.toml": "foo = 1\n" + BASE}, ["train", "{d}/c.toml", "--workdir", "{d}/run"],
                    "foo: unknown key"),
    "unknown key in a section": ({"c.toml": config(append="[segments.extra]\n")}, ["gradcheck", "{d}/c.toml"],
                                 "segments.extra"),
    "wrong type": ({"c.toml": BASE.replace("n_atoms = 16", 'n_atoms = "many"')},
                   ["simulate", "{d}/c.toml", "--workdir", "{d}/run"], "system.n_atoms"),
    # out-of-range values
    "dt zero": ({"c.toml": BASE}, ["train", "{d}/c.toml", "--workdir", "{d}/run", "--set", "segments.dt=0"],
                "segments.dt"),
    "negative temperature": ({"c.toml": BASE}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run", "--set",
                             "sampling.temperature=-5"], "sampling.temperature"),
    "zero replicas": ({"c.toml": BASE}, ["train", "{d}/c.toml", "--workdir", "{d}/run", "--set",
                      "replicas.count=0"], "replicas.count"),
    "steps not a multiple of record_every": ({"c.toml": BASE}, ["gradcheck", "{d}/c.toml", "--set",
                                             "segments.steps=21"], "multiple of segments.record_every"),
    "zero learning-rate half-life": ({"c.toml": BASE}, ["train", "{d}/c.toml", "--workdir", "{d}/run", "--set",
                                     "optimizer.learning_rate_half_life=0"], "optimizer.learning_rate_half_life"),
    "learning rate of no parameter": ({"c.toml": BASE}, ["train", "{d}/c.toml", "--workdir", "{d}/run", "--set",
                                      'optimizer.learning_rate={"lj.sgma" = 1e-3}'], "optimizer.learning_rate.lj.sgma"),
    "unknown potential kind": ({"c.toml": BASE}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run", "--set",
                               'potential.kind="eam"'], "potential.kind"),
    "water model on argon": ({"c.toml": BASE}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run", "--set",
                             'potential.kind="spc_fw"'], "potential.kind"),
    "cutoff beyond half the box": ({"c.toml": BASE}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run", "--set",
                                   "potential.cutoff=0.9"], "potential.cutoff"),
    # structure files
    "missing structure": ({"c.toml": config(STRUCTURE)}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run"],
                          "system.path: no such file"),
    "empty structure": ({"c.toml": config(STRUCTURE), "s.extxyz": ""}, ["train", "{d}/c.toml", "--workdir",
                        "{d}/run"], "system.path"),
    "binary structure": ({"c.toml": config(STRUCTURE), "s.extxyz": bytes(range(256))},
                         ["simulate", "{d}/c.toml", "--workdir", "{d}/run"], "system.path"),
    "overlapping atoms": ({"c.toml": config(STRUCTURE), "s.extxyz": xyz(*GRID, (5.0, 1.0, 1.2))},
                          ["simulate", "{d}/c.toml", "--workdir", "{d}/run"], "overlapping"),
    "structure without a cell": ({"c.toml": config(STRUCTURE), "s.extxyz": "2\n\nAr 0 0 0\nAr 4 0 0\n"},
                                 ["simulate", "{d}/c.toml", "--workdir", "{d}/run"], "orthorhombic cell"),
    # target files
    "missing target file": ({"c.toml": config({"[targets]": CURVE})}, ["train", "{d}/c.toml", "--workdir",
                            "{d}/run"], "targets.0.file"),
    "target x not increasing": ({"c.toml": config({"[targets]": CURVE}), "t.txt": "0 1\n2 0.5\n1 0.2\n3 0\n4 0\n"},
                                ["train", "{d}/c.toml", "--workdir", "{d}/run"], "increase strictly"),
    "target x duplicated": ({"c.toml": config({"[targets]": CURVE}), "t.txt": "0 1\n1 0.5\n1 0.2\n3 0\n4 0\n"},
                            ["simulate", "{d}/c.toml", "--workdir", "{d}/run"], "increase strictly"),
    "target not finite": ({"c.toml": config({"[targets]": CURVE}), "t.txt": "0 1\n1 nan\n2 0.2\n3 0\n"},
                          ["train", "{d}/c.toml", "--workdir", "{d}/run"], "non-finite"),
    "target one column": ({"c.toml": config({"[targets]": CURVE}), "t.txt": "0\n1\n2\n3\n"},
                          ["train", "{d}/c.toml", "--workdir", "{d}/run"], "two columns"),
    "scalar target with a file": ({"c.toml": config({"[targets]": 'observable = "diffusion"\nfile = "t.txt"'})},
                                  ["train", "{d}/c.toml", "--workdir", "{d}/run"], "scalar target"),
    "rdf target without reweighting": ({"c.toml": config({"[targets]": 'observable = "rdf"\nfile = "t.txt"\n'
                                                                        "reweight = false"}),
                                        "t.txt": "0.1 0\n0.2 0\n0.3 1\n0.4 1\n"},
                                       ["train", "{d}/c.toml", "--workdir", "{d}/run"], "reweight"),
    # models and run directories
    "pretrain without teacher or data": ({"c.toml": BASE}, ["pretrain", "{d}/c.toml", "--workdir", "{d}/run",
                                         "--set", 'potential.kind="mpnn"'], "pretrain"),
    "checkpoint that does not exist": ({"c.toml": BASE}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run",
                                       "--set", "potential.checkpoint={d}/nowhere"], "potential.checkpoint"),
    "checkpoint of another architecture": ({"c.toml": BASE}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run",
                                           "--set", 'potential.kind="mpnn"', "--set", "potential.checkpoint={run}"],
                                           "potential.checkpoint"),
    "incompatible resume": ({"c.toml": BASE}, ["train", "{d}/c.toml", "--workdir", "{run}", "--set",
                            "potential.epsilon=1.1"], "potential.epsilon"),
    "workdir is a file": ({"c.toml": BASE, "w": "a file"}, ["simulate", "{d}/c.toml", "--workdir", "{d}/w"],
                          "--workdir"),
    "simulate into a train run": ({"c.toml": BASE}, ["simulate", "{d}/c.toml", "--workdir", "{run}"], "train"),
    "pretrain into a train run": ({"c.toml": BASE}, ["pretrain", "{d}/c.toml", "--workdir", "{run}", "--set",
                                  'potential.kind="mpnn"', "--set",
                                  'pretrain.teacher={kind = "lennard_jones", sigma = 0.34, epsilon = 1.0}'],
                                  "--workdir"),
    "train into a simulate run": ({"c.toml": BASE, "sim/observables.json": "{}", "sim/config.toml": BASE},
                                  ["train", "{d}/c.toml", "--workdir", "{d}/sim"], "simulate run"),
    "plot of a directory that is no run": ({"x/a.txt": "x"}, ["plot", "{d}/x"], "not a run directory"),
    "plot of a missing directory": ({}, ["plot", "{d}/nowhere"], "not a run directory"),
    # the command line
    "unknown command": ({}, ["fly", "{d}/c.toml"], "invalid choice: 'fly'"),
    "no --workdir": ({"c.toml": BASE}, ["train", "{d}/c.toml"], "--workdir"),
    "override without =": ({"c.toml": BASE}, ["simulate", "{d}/c.toml", "--workdir", "{d}/run", "--set",
                           "segments.steps"], "segments.steps"),
    "override of an unknown key": ({"c.toml": BASE}, ["validate", "{d}/c.toml", "--set", "potential.colour=1"],
                                   "potential.colour"),
    "override with a bad value": ({"c.toml": BASE}, ["validate", "{d}/c.toml", "--set", "replicas.count=[1"],
                                  "replicas.count"),
    "negative finite-difference step": ({"c.toml": BASE}, ["gradcheck", "{d}/c.toml", "--fd-step", "-1"],
                                        "--fd-step"),
}


def tree_hash(*roots):
    """{path: sha256 of its bytes (or 'dir')} of everything below `roots`."""
    out = {}
    for root in map(Path, roots):
        for p in sorted(root.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv):
    """(exit code, stderr) of `dmd-dist ARGV` run in this process; the logger is left as it was."""
    logger = logging.getLogger("dmd_dist")
    handlers, level = list(logger.handlers), logger.level
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse
                code = e.code
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-iteration train run of BASE (its own directory: cases must not change it)."""
    d = tmp_path_factory.mktemp("finished")
    (d / "c.toml").write_text(BASE)
    code, err = run_cli(["train", str(d / "c.toml"), "--workdir", str(d / "run")])
    assert code == 0, err
    return d / "run"


def setup_case(d, files):
    for name, content in files.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def assert_refused(code, err, words, before, after, created):
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert "Traceback" not in err
    assert after == before, "a file was changed, created or removed"
    assert not created, created


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path, finished_run, case):
    files, argv, words = CASES[case]
    setup_case(tmp_path, files)
    argv = [a.replace("{d}", str(tmp_path)).replace("{run}", str(finished_run)) for a in argv]
    before = tree_hash(tmp_path, finished_run)
    code, err = run_cli(argv)
    after = tree_hash(tmp_path, finished_run)
    assert_refused(code, err, words, before, after, [p for p in ("run", "nowhere") if (tmp_path / p).exists()])


def test_replicas_not_divisible_by_the_devices_are_refused_before_anything_is_written(tmp_path):
    """Needs two devices, so a subprocess (in-process JAX has one)."""
    setup_case(tmp_path, {"c.toml": BASE})
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    before = tree_hash(tmp_path)
    r = subprocess.run([sys.executable, "-m", "dmd_dist", "train", str(tmp_path / "c.toml"), "--workdir",
                        str(tmp_path / "run"), "--set", "replicas.count=3"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert_refused(r.returncode, r.stderr, "replicas.count", before, tree_hash(tmp_path), (tmp_path / "run").exists())


def test_the_table_covers_every_command_and_thirty_cases():
    commands = {argv[0] for _, argv, _ in CASES.values()}
    assert {"train", "simulate", "pretrain", "gradcheck", "plot", "validate"} <= commands
    assert len(CASES) + 1 >= 30
