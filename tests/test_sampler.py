"""sampler.py: a replica's chain depends only on the seed and its global index, and chains start at the
temperatures asked for."""

from pathlib import Path

import jax
import numpy as np
import pytest

from dmd_dist.assemble import build_potential, build_system, sampler, set_precision
from dmd_dist.integrators import kinetic_energy
from dmd_dist.sampler import init_chains
from dmd_dist.config import load_config
from dmd_dist.units import kinetic_temperature

CONFIG = Path(__file__).resolve().parents[1] / "configs/tiny_argon_train.toml"


@pytest.fixture(scope="module")
def argon():
    cfg = load_config(CONFIG, ["precision=float64"])
    set_precision(cfg.precision)
    system = build_system(cfg, jax.random.PRNGKey(0))
    potential, params = build_potential(cfg, system)
    return cfg, system, potential, params


def _chains(argon, key, count, temperatures=None, offset=0):
    cfg, system, potential, params = argon
    t = cfg.sampling.temperature if temperatures is None else temperatures
    return init_chains(sampler(cfg, system, potential), system, potential, params, key, count, t, offset)


def test_a_replica_is_the_same_in_any_batch(argon):
    key = jax.random.PRNGKey(7)
    batch = _chains(argon, key, 6)
    alone = _chains(argon, key, 2, offset=3)  # replicas 3 and 4, as another process would hold them
    for field in ("position", "velocity", "key"):
        np.testing.assert_array_equal(getattr(batch, field)[3:5], getattr(alone, field))


def test_chains_start_at_their_own_temperatures(argon):
    cfg, system, *_ = argon
    wanted = np.repeat([60.0, 120.0, 240.0], 12)
    chains = _chains(argon, jax.random.PRNGKey(1), len(wanted), temperatures=wanted)
    dof = 3 * system.masses.shape[0] - 3  # centre-of-mass motion removed
    measured = np.array([kinetic_temperature(kinetic_energy(v, system.masses), dof) for v in chains.velocity])
    # 12 chains of 3N-3 degrees of freedom: the mean of T/T_wanted has a relative spread of sqrt(2/dof/12)
    spread = np.sqrt(2.0 / dof / 12)
    np.testing.assert_allclose((measured / wanted).reshape(3, 12).mean(1), 1.0, atol=4 * spread)
    default = _chains(argon, jax.random.PRNGKey(1), 2)  # sampling.temperature for every chain
    at_sampling = _chains(argon, jax.random.PRNGKey(1), 2,
                              temperatures=np.full(2, cfg.sampling.temperature))
    np.testing.assert_array_equal(default.velocity, at_sampling.velocity)
