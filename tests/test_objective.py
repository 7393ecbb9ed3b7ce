"""The training objective's reweighting term: with `reweight` the gradient of the sharded ensemble loss
gains exactly -beta Cov(dU/dtheta, dL/dC . c) over the start frames (docs/method.md §4), and the loss
value is unchanged; a segment that goes non-finite is masked out of the loss and of the gradient, for
the MPNN as for LJ; a static target (the RDF of the start frames) beside a dynamical one has that term
as its whole gradient, and both appear among the loss terms."""

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from dmd_dist import assemble
from dmd_dist.assemble import build, chains as replica_chains, sampler
from dmd_dist.observables.reweight import covariance_gradient
from dmd_dist.sampler import advance
from dmd_dist.driver import OverflowCounter
from dmd_dist.errors import InputError
from dmd_dist.config import load_config
from dmd_dist.train.objective import build_objective
from dmd_dist.mesh import replica_mesh, shard_replicas
from dmd_dist.train.trainer import sharded_value_and_grad, segment_statistics
from dmd_dist.units import BOLTZMANN

from test_train import CONFIG, CONFIGS


class Run(NamedTuple):
    """One configuration's sharded ensemble gradient, with what built it."""

    cfg: object
    system: object
    potential: object
    params: dict
    objective: object
    frames: object  # (replica, frame, ...) start frames
    value_and_grad: Callable  # compiled once: (params, sharded frames) -> ((loss, aux), grads)
    mesh: object
    loss: jax.Array
    grads: dict
    count: int  # segments in the ensemble
    terms: dict  # the loss's terms


def _evaluate(run, frames):
    """(loss, grads, count, terms) of `run`'s compiled gradient on `frames`."""
    (loss, (_, terms, count, check, _)), grads = run.value_and_grad(run.params, shard_replicas(frames, run.mesh))
    # The reverse-time adjoint's reconstruction error of every segment reaches the overflow check (+inf had a
    # list overflowed in the backward pass, or in the forward pass, which these frames' tight lists from
    # `advance` may do: the trainer re-allocates first): float64, 60 steps, reconstructed to ~1e-13 nm.
    if not int(check["segment_overflow"]):
        assert run.cfg.segments.adjoint == "reverse_time" and 0 <= float(check["backward_error"]) < 1e-9
    return loss, grads, int(count), terms


def _run(reweight, overrides=(), config=CONFIG):
    """`config` with the first target's reweighting set and `overrides`: 6 replicas x 2 sampled start frames
    and the sharded ensemble gradient of their 60-step segments."""
    cfg = load_config(config, [f"targets.0.reweight={str(reweight).lower()}", "replicas.count=6",
                               "segments.steps=60", *overrides])
    system, potential, params, key = build(cfg)
    objective = build_objective(cfg, system, potential)
    nvt, chains = sampler(cfg, system, potential), replica_chains(cfg, system, potential, params, key, cfg.replicas.count)
    frames = [chains := advance(nvt, potential, params, chains, 50, OverflowCounter(), cfg.potential.capacity_factor)
              for _ in range(2)]
    frames = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *frames)  # (replica, frame, ...)
    mesh = replica_mesh()
    vg = sharded_value_and_grad(cfg, system, potential, objective, mesh)  # jitted
    run = Run(cfg, system, potential, params, objective, frames, vg, mesh, None, None, 0, {})
    loss, grads, count, terms = _evaluate(run, frames)
    return run._replace(loss=loss, grads=grads, count=count, terms=terms)


_gradient = functools.cache(_run)  # a configuration's run, shared by the tests that need it


def _covariance_term(cfg, system, potential, params, objective, frames, only=None):
    """-beta Cov(dU/dtheta, dL/dC . c) from per-frame quantities; `only`: the statistics of one target."""
    one = segment_statistics(cfg, system, potential, objective)

    @jax.jit  # one program, not op by op
    def term(params, flat):
        sums = jax.vmap(one, (None, 0))(params, flat)[0]
        mean = jax.tree.map(lambda a: jnp.mean(a, axis=0), sums)
        dl_dmean = jax.grad(lambda m: objective.loss(m)[0])(mean)
        # Cov is linear in c: sum_k dL/dC_k Cov(dU, c_k) = Cov(dU, sum_k dL/dC_k c_k).
        c = sum(jnp.sum(sums[k] * dl_dmean[k], axis=tuple(range(1, sums[k].ndim))) for k in sums if only in (None, k))
        du = jax.vmap(lambda x, n: ravel_pytree(jax.grad(potential.energy)(params, x, n))[0])(flat.position,
                                                                                          flat.neighbors)
        return covariance_gradient(du, c, 1.0 / (BOLTZMANN * cfg.sampling.temperature))

    return term(params, jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), frames))


def test_reweighting_adds_the_covariance_term_to_the_gradient():
    rw, plain = _gradient(True), _gradient(False)
    assert rw.count == 12 and rw.objective.reweighted and not plain.objective.reweighted
    assert float(rw.loss) == pytest.approx(float(plain.loss), rel=1e-12)  # weights are uniform in value

    expected = _covariance_term(rw.cfg, rw.system, rw.potential, rw.params, rw.objective, rw.frames)  # per frame
    difference = ravel_pytree(rw.grads)[0] - ravel_pytree(plain.grads)[0]
    assert np.max(np.abs(expected)) > 0.05 * np.max(np.abs(ravel_pytree(plain.grads)[0]))  # not negligible
    np.testing.assert_allclose(difference, expected, rtol=1e-7, atol=1e-9 * np.max(np.abs(expected)))


def test_a_static_rdf_target_beside_the_dynamical_one_adds_exactly_its_reweighting_term(tmp_path):
    """Diffusion (no reweighting) plus the start frames' g(r) against a target curve: the loss has both
    terms, and the gradient exceeds the diffusion-only one by exactly the RDF's covariance term."""
    r = np.linspace(0.0, 0.9, 200)
    target = tmp_path / "rdf.txt"
    np.savetxt(target, np.column_stack([r, np.where(r > 0.33, 1.0, 0.0)]))
    rdf = f'targets.1={{observable = "rdf", file = "{target}", weight = 0.5}}'
    both, diffusion = _run(False, (rdf,)), _gradient(False)  # the RDF run is this test's alone: not cached
    assert both.count == 12 and both.objective.reweighted
    assert set(both.terms) == {"diffusion", "rdf"} and float(both.terms["rdf"]) > 0
    assert float(both.loss) == pytest.approx(float(diffusion.loss) + float(both.terms["rdf"]), rel=1e-10)
    expected = _covariance_term(both.cfg, both.system, both.potential, both.params, both.objective, both.frames,
                                only="rdf")
    difference = ravel_pytree(both.grads)[0] - ravel_pytree(diffusion.grads)[0]
    assert np.max(np.abs(expected)) > 0
    np.testing.assert_allclose(difference, expected, rtol=1e-7, atol=1e-9 * np.max(np.abs(expected)))


def test_an_rdf_target_without_reweighting_is_refused(tmp_path):
    r = np.linspace(0.0, 0.9, 50)
    np.savetxt(tmp_path / "rdf.txt", np.column_stack([r, np.ones_like(r)]))
    cfg = load_config(CONFIG, [f'targets=[{{observable = "rdf", file = "{tmp_path / "rdf.txt"}", reweight = false}}]'])
    system, potential, params, key = build(cfg)
    with pytest.raises(InputError, match="targets.0.reweight"):
        build_objective(cfg, system, potential)


@pytest.mark.parametrize("model,reweight", [("lj", False), ("mpnn", True)])
def test_windows_vectorised_or_one_after_another_give_the_same_gradient(model, reweight):
    """`replicas.gradient_batching`: the device's 12 windows as one vmapped program or by lax.map (the CPU
    default) give the same loss and gradient to rounding (float64), with the reweighting term for the MPNN."""
    run = _gradient(reweight, ('potential.neighbor_list="dense"',), CONFIGS[model])  # shared with the next test
    assert assemble.gradient_batching(run.cfg) == "map"  # "auto" in float64 on this CPU
    assert assemble.gradient_batching(run.cfg, platform="gpu") == "vmap"
    assert assemble.gradient_batching(run.cfg.model_copy(update={"precision": "float32"})) == "vmap"
    cfg = run.cfg.model_copy(update={"replicas": run.cfg.replicas.model_copy(update={"gradient_batching": "vmap"})})
    vmapped = run._replace(cfg=cfg, value_and_grad=sharded_value_and_grad(cfg, run.system, run.potential,
                                                                          run.objective, run.mesh))
    loss, grads, count, _ = _evaluate(vmapped, run.frames)
    assert count == run.count == 12
    assert float(loss) == pytest.approx(float(run.loss), rel=1e-12)
    expected = ravel_pytree(run.grads)[0]
    np.testing.assert_allclose(ravel_pytree(grads)[0], expected, rtol=1e-10, atol=1e-12 * float(np.max(np.abs(expected))))


@pytest.mark.parametrize("model,fault,reweight", [("lj", "nan velocity", False),
                                                  ("lj", "overlapping atoms", True),
                                                  ("mpnn", "nan position", True)])
def test_a_non_finite_segment_is_masked_and_counted_and_the_gradient_is_that_of_the_others(model, fault, reweight):
    """One start frame with a NaN velocity, two atoms on top of each other (LJ: infinite energy and forces,
    also in the reweighting weights; the MPNN stays finite there) or a NaN position: its segment is left out of the ensemble (count 11 of 12), the loss
    and the gradient are finite and equal those of the 11 other segments alone.  The failed segment's
    own gradient is masked (trainer.failed_segments_without_gradient), not 0 * NaN."""
    dense = ('potential.neighbor_list="dense"',)  # frames stacked from two samplings need one list layout
    run = _gradient(reweight, dense, CONFIGS[model])
    cfg, system, potential, params, objective, frames = (run.cfg, run.system, run.potential, run.params,
                                                         run.objective, run.frames)
    if fault == "nan velocity":
        broken = dataclasses.replace(frames, velocity=frames.velocity.at[0, 1, 0, 0].set(jnp.nan))
    elif fault == "overlapping atoms":
        broken = dataclasses.replace(frames, position=frames.position.at[0, 1, 1].set(frames.position[0, 1, 0]))
    else:
        broken = dataclasses.replace(frames, position=frames.position.at[0, 1, 3, 2].set(jnp.nan))
    loss, grads, count, _ = _evaluate(run, broken)  # the same compiled program
    assert count == 11 and np.isfinite(float(loss))
    assert np.all(np.isfinite(ravel_pytree(grads)[0]))

    flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), frames)
    good = jax.tree.map(lambda a: a[np.arange(12) != 1], flat)  # replica 0, frame 1 is flat index 1
    one = segment_statistics(cfg, system, potential, objective)

    def loss_of_the_others(p):
        sums, ok, _, energies = jax.vmap(one, (None, 0))(p, good)
        mean = jax.tree.map(lambda a: jnp.mean(a, axis=0), sums)
        return objective.loss(mean, objective.reweighted_mean(sums, ok, energies) if reweight else None)[0]

    expected_loss, expected = jax.jit(jax.value_and_grad(loss_of_the_others))(params)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-10)
    np.testing.assert_allclose(ravel_pytree(grads)[0], ravel_pytree(expected)[0], rtol=1e-8,
                               atol=1e-10 * float(np.max(np.abs(ravel_pytree(expected)[0]))))
