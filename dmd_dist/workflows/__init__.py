"""The paper's workflows end to end, one command each (docs/results.md):

    python -m dmd_dist.workflows argon-mpnn-quick [--out runs/argon-mpnn-quick]
    python -m dmd_dist.workflows water-ir-classical
    python -m dmd_dist.workflows water-ir-mpnn

A workflow is a sequence of `dmd-dist` commands (steps.py: each a subprocess of the CLI, so every step
leaves the run directory and log of the command a user would type, and the exact commands are written into
the results) followed by an evaluation of their outputs by independent `simulate` runs of the models
before and after refinement and of the known answer, a table and figures.  Every step is skipped when its
output already exists, so a rerun after a kill continues where it stopped (`pretrain` and `train` also
resume within themselves).  One module per science: argon.py (argon ML), water.py (water IR, classical),
water_mpnn.py (water IR, ML).
"""

import argparse
import os
import sys
from pathlib import Path

from dmd_dist.compilation_cache import ENV
from dmd_dist.errors import InputError
from dmd_dist.workflows.argon import ArgonMPNN
from dmd_dist.workflows.steps import StepFailed, default_jobs
from dmd_dist.workflows.water import WaterIRClassical
from dmd_dist.workflows.water_mpnn import WaterIRMPNN

ROOT = Path(__file__).resolve().parents[2]

# The unperturbed SPC/Fw force constants (dmd_dist/potentials/water.py), the answer of the classical IR workflow.
SPC_FW_FORCE_CONSTANTS = {"bond.k": 443153.3808, "angle.k": 317.5656}
# Teacher B of the ML water workflows: bond k x 0.90, angle k x 1.15 (configs/targets/make_water_ir_teacher.py).
WATER_TEACHER_B = {"parameters": {"bond.k": 0.90 * SPC_FW_FORCE_CONSTANTS["bond.k"],
                                  "angle.k": 1.15 * SPC_FW_FORCE_CONSTANTS["angle.k"]}}
# A static target beside the IR spectrum: teacher B's g(r) of the start frames, through the reweighting term.
WATER_RDF_TARGET = 'targets.1={observable = "rdf", file = "targets/water_rdf_mpnn_teacher_b.txt", weight = 3e11}'

# The water workflows' evaluation runs: each replica equilibrates 2 ps (4000 steps) from the common start
# before its first frame.  With the configs' 0.1-0.2 ps the replicas of a 16-water box share their start's
# slow state and the stretch peak's standard error was a third of its spread between seeds; with 2 ps it
# matches it (benchmarks/standard_errors.py, docs/observables.md).  The paper-size one: the same, 16 replicas.
REPLICAS_FORGET_THE_START = "sampling.equilibration_steps=4000"
WATER_EVALUATION = ("replicas.count=4", "sampling.frames=8", REPLICAS_FORGET_THE_START)

WORKFLOWS = {
    "argon-mpnn-quick": ArgonMPNN("configs/argon_mpnn_refine_quick.toml", {"sigma": 0.340, "epsilon": 0.996},
                                  ("replicas.count=8", "sampling.frames=8")),
    "argon-mpnn": ArgonMPNN("configs/argon_mpnn_refine.toml", {"sigma": 0.340, "epsilon": 0.996},
                            ("replicas.count=16", "sampling.frames=8")),
    "argon-mpnn-tiny": ArgonMPNN("configs/tiny_argon_mpnn_refine.toml", {"sigma": 0.340, "epsilon": 1.6},
                                 ("replicas.count=8", "sampling.frames=4"), devices=2),
    "water-ir-classical": WaterIRClassical("configs/water_ir_refine_quick.toml", SPC_FW_FORCE_CONSTANTS,
                                           WATER_EVALUATION),
    "water-ir-classical-tiny": WaterIRClassical("configs/tiny_water_ir_refine.toml", SPC_FW_FORCE_CONSTANTS,
                                                WATER_EVALUATION),
    "water-ir-mpnn": WaterIRMPNN("configs/water_ir_mpnn_refine_quick.toml", WATER_TEACHER_B,
                                 WATER_EVALUATION),
    "water-ir-mpnn-learned-dipole": WaterIRMPNN("configs/water_ir_mpnn_refine_quick.toml", WATER_TEACHER_B,
                                                WATER_EVALUATION, learned_dipole=True),
    "water-ir-mpnn-rdf": WaterIRMPNN("configs/water_ir_mpnn_refine_quick.toml", WATER_TEACHER_B,
                                     WATER_EVALUATION, overrides=(WATER_RDF_TARGET,)),
    "water-ir-mpnn-paper": WaterIRMPNN("configs/water_ir_mpnn_refine.toml", WATER_TEACHER_B,
                                       ("replicas.count=16", "sampling.frames=8", REPLICAS_FORGET_THE_START)),
    "water-ir-mpnn-tiny": WaterIRMPNN("configs/tiny_water_ir_mpnn_refine.toml", WATER_TEACHER_B,
                                      WATER_EVALUATION),
}


def command_env(wf, out, environ=None):
    """The environment of a workflow's commands: `environ` (default os.environ) with `wf.devices` simulated
    CPU devices, and on a CPU (no accelerator plugin; output.compilation_cache = "auto" keeps no cache there)
    one compilation cache for all of them, out/xla-cache, on this machine only: a program compiled by one
    command (the teachers' runs, the network's simulate, the teacher preparing every start) is loaded by the
    next.  JAX_COMPILATION_CACHE_DIR, where set, is kept."""
    env = dict(os.environ if environ is None else environ)
    if "--xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", ""):  # CPU: simulated devices
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={wf.devices}".strip()
    if ENV not in env and default_jobs() > 1:
        env[ENV] = str(Path(out) / "xla-cache")
    return env


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dmd_dist.workflows", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(WORKFLOWS))
    p.add_argument("--out", type=Path, help="output directory (default runs/NAME)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--jobs", type=int, choices=range(1, 9), metavar="N", default=None,
                   help="commands run side by side where they do not depend on each other (default: 2 on a "
                        "CPU-only JAX, 1 with an accelerator plugin; progress bars only with 1)")
    args = p.parse_args(argv)
    from dmd_dist.cli import setup_logging

    wf = WORKFLOWS[args.name]
    out = args.out or ROOT / "runs" / args.name
    setup_logging(out)  # out/log.txt: the workflow's steps; each command logs into its own run directory
    try:
        wf.run(out, command_env(wf, out), args.progress, args.jobs)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
