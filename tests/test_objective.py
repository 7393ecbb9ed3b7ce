"""The training objective's reweighting term: with `reweight` the gradient of the sharded ensemble loss
gains exactly -beta Cov(dU/dtheta, dL/dC . c) over the start frames (docs/method.md §4), and the loss
value is unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from dmd_dist.assemble import build, chains as replica_chains, sampler
from dmd_dist.observables.reweight import covariance_gradient
from dmd_dist.sampler import advance
from dmd_dist.driver import OverflowCounter
from dmd_dist.config import load_config
from dmd_dist.train.objective import build_objective
from dmd_dist.train.parallel import replica_mesh, shard_replicas
from dmd_dist.train.trainer import sharded_value_and_grad, segment_statistics
from dmd_dist.units import BOLTZMANN

from test_train import CONFIG


def _gradient(reweight):
    cfg = load_config(CONFIG, [f"targets.0.reweight={str(reweight).lower()}", "replicas.count=6",
                               "segments.steps=60"])
    system, potential, params, key = build(cfg)
    objective = build_objective(cfg, system, params)
    nvt, chains = sampler(cfg, system, potential), replica_chains(cfg, system, potential, params, key, cfg.replicas.count)
    frames = [chains := advance(nvt, potential, params, chains, 50, OverflowCounter(), cfg.potential.capacity_factor)
              for _ in range(2)]
    frames = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *frames)  # (replica, frame, ...)
    mesh = replica_mesh()
    vg = sharded_value_and_grad(cfg, system, potential, objective, mesh)
    (loss, (_, _, count, _)), grads = vg(params, shard_replicas(frames, mesh))
    return cfg, system, potential, params, objective, frames, loss, grads, int(count)


def test_reweighting_adds_the_covariance_term_to_the_gradient():
    cfg, system, potential, params, objective, frames, loss_rw, g_rw, count = _gradient(True)
    _, _, _, _, plain_objective, _, loss_plain, g_plain, _ = _gradient(False)
    assert count == 12 and objective.reweighted and not plain_objective.reweighted
    assert float(loss_rw) == pytest.approx(float(loss_plain), rel=1e-12)  # weights are uniform in value

    # The ensemble term written out from per-frame quantities.
    flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), frames)
    sums = jax.vmap(segment_statistics(cfg, system, potential, objective), (None, 0))(params, flat)[0]
    mean = jax.tree.map(lambda a: jnp.mean(a, axis=0), sums)
    dl_dmean = jax.grad(lambda m: objective.loss(m)[0])(mean)
    # Cov is linear in c: sum_k dL/dC_k Cov(dU, c_k) = Cov(dU, sum_k dL/dC_k c_k).
    c = sum(jnp.sum(sums[k] * dl_dmean[k], axis=tuple(range(1, sums[k].ndim))) for k in sums)
    du = jax.vmap(lambda x, n: ravel_pytree(jax.grad(potential.energy)(params, x, n))[0])(flat.position,
                                                                                      flat.neighbors)
    expected = covariance_gradient(du, c, 1.0 / (BOLTZMANN * cfg.sampling.temperature))

    difference = ravel_pytree(g_rw)[0] - ravel_pytree(g_plain)[0]
    assert np.max(np.abs(expected)) > 0.05 * np.max(np.abs(ravel_pytree(g_plain)[0]))  # not negligible
    np.testing.assert_allclose(difference, expected, rtol=1e-7, atol=1e-9 * np.max(np.abs(expected)))
