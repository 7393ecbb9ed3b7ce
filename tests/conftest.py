import os
import tempfile
from pathlib import Path

# Every run of the session (both xdist workers, every CLI subprocess) shares one compilation cache, in a
# directory of its own rather than the user's: the CLI tests rerun the same configs many times, and
# compiling is most of a small run (dmd_dist/compilation_cache.py).
# XLA:CPU logs an error line for every program it loads from the cache (openxla/xla#44565; the program is
# fine): silence XLA's C++ logging below FATAL, or the flood fills the stderr pipes of the CLI subprocesses.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"dmd-dist-tests-xla-{os.getuid()}"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import pytest

jax.config.update("jax_enable_x64", True)

from dmd_dist import potentials, systems  # noqa: E402

ARGON = dict(sigma=0.3405, epsilon=0.9960)  # Rahman's argon, nm and kJ/mol
T_ARGON = 94.4
RHO_ARGON = 1.374  # g/cm^3


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Every test starts in float64, its module- and session-scoped fixtures too (this runs before any
    fixture is set up; an autouse fixture would come after the wider-scoped ones): in-process float32 runs
    (set_precision) flip JAX's global x64 switch, and which file ran before another depends on how xdist
    deals them (test_mpnn.py's module fixtures once got float32 arrays this way: 3 failures at 1e-4)."""
    jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="session")
def argon():
    """256-atom liquid argon at Rahman's state point, equilibrated: (system, potential, params)."""
    key = jax.random.PRNGKey(1)
    s = systems.lattice_fluid(256, T_ARGON, key, "Ar", density=RHO_ARGON)
    pot, params = potentials.lennard_jones_potential(s, cutoff=1.0, skin=0.1, neighbor_mode="list", **ARGON)
    s = systems.prepare(s, pot, params, T_ARGON, key, 3000, 0.002, 1.0, melt_temperature=2 * T_ARGON)
    return s, pot, params


@pytest.fixture(scope="session")
def water():
    """32 flexible SPC/Fw-like water molecules at 1 g/cm^3, equilibrated: (system, potential, params)."""
    key = jax.random.PRNGKey(2)
    s = systems.water_lattice(32, 300.0, key, density=1.0)
    pot, params = potentials.spc_fw_potential(s, cutoff=0.45, skin=0.05, neighbor_mode="dense")
    s = systems.prepare(s, pot, params, 300.0, key, 2000, 0.0005, 5.0)
    return s, pot, params


# The longest files first (seconds on 2 cores from an empty compilation cache, as CI starts, from the junit
# report of a whole run): with `--dist loadfile` each file runs whole on one worker, in collection order, so
# a long file dealt last leaves the other worker idle until it ends.  Longest-first lets the short files
# fill in around them.
LONGEST_FIRST = (
    "test_train.py", "test_cli.py", "test_workflows_water_mpnn.py", "test_pretrain.py", "cluster/test_slurm.py",
    "test_workflows_argon.py", "integration/test_multiprocess.py", "test_objective.py", "test_workflows_water.py",
    "test_observables.py", "integration/test_rank_death.py", "test_potentials.py", "test_adjoint.py",
    "test_ensemble_gradient.py", "test_numerical_faults.py", "test_dipole.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.path.as_posix()
        return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith("tests/" + name)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order within a file, and of the other files, is kept
