"""`train`: the outer training loop (docs/architecture.md), resumable from its own checkpoints.

Per iteration: every replica continues its own Langevin chain (not differentiated) to `sampling.frames`
start frames; one `value_and_grad` of a function evaluated inside `jax.shard_map` over the `replica`
mesh axis runs the NVE windows under the configured adjoint, averages the per-segment statistics over
all replicas (psum), and evaluates the loss; differentiating through the psum broadcasts dL/dC back and
sums the parameter gradient over devices.  optax updates the parameters identically everywhere.

Replica r's randomness comes from fold_in(seed key, r) and lives in its sampler state, so results do
not depend on the device count, and a restored checkpoint continues exactly the run that was saved.
"""

import dataclasses
import hashlib
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from dmd_dist import assemble, checkpoint
from dmd_dist.assemble import build
from dmd_dist.config import DipoleConfig, dump_config
from dmd_dist.errors import Diverged
from dmd_dist.driver import OverflowCounter, retry_on_overflow, scan_steps
from dmd_dist.mesh import (AXIS, check_replica_count, from_process_local, local_replicas, per_device, relister,
                           replica_mesh, replicate)
from dmd_dist.neighbors import grown_capacity
from dmd_dist.params import flatten
from dmd_dist.potentials.dipole import DIPOLE_KEY
from dmd_dist.potentials.pretrained import model_meta
from dmd_dist.progress import progress_bar
from dmd_dist.records import frame_context
from dmd_dist.sampler import advance
from dmd_dist.segments import energy_error, over_frames, run_window
from dmd_dist.train.objective import build_objective
from dmd_dist.train.optimizer import make_optimizer
from dmd_dist.train.preemption import Preempted, StopFlag
from dmd_dist.train.parallel import any_process, barrier, peer_lost

log = logging.getLogger("dmd_dist")

KIND = "dmd-dist train"  # the `kind` in the meta of every train checkpoint
# What defines the model and the sampler state: a resume with any of these changed is refused.
FINGERPRINT_KEYS = ("seed", "precision", "system", "potential", "sampling", "segments", "replicas")


def fingerprint(cfg):
    """What a resume must match.  The dipole model only when it is not the default, so that runs from before
    [dipole] existed still resume."""
    keys = FINGERPRINT_KEYS + (("dipole",) if cfg.dipole != DipoleConfig() else ())
    out = {k: v for k, v in cfg.model_dump(mode="json").items() if k in keys}
    del out["replicas"]["gradient_batching"]  # a layout, like the device count: a resume may change it
    del out["segments"]["max_energy_error"]  # which windows count, not the state: a resume may change it
    return out


def params_sha256(params):
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def train(cfg, workdir, progress=None):
    """Run (or resume) training; writes config.toml, metrics.jsonl, checkpoints/, log.txt in `workdir`.

    Raises InputError for bad input (before anything is written), Preempted after a signal-triggered
    checkpoint, and Diverged after `train.max_failed_iterations` failed iterations in a row (a failed
    iteration, one without a finite loss and gradient, is recorded but not applied).  Returns the final
    parameters.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    resume_step, resume_meta = checkpoint.resume_point(ckpt_dir, KIND, fingerprint(cfg))
    system, potential, params, key = build(cfg)
    user_cfg, cfg = cfg, _resolved_window(cfg, system, potential, params, key, resume_meta)
    objective = build_objective(cfg, system, potential)
    mesh = replica_mesh()
    check_replica_count(cfg.replicas.count, mesh)
    optimizer = make_optimizer(cfg.optimizer, params)
    lead = jax.process_index() == 0  # one process writes the files every process shares
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.toml").write_text(dump_config(cfg))
    counter = OverflowCounter()
    relist = relister(potential.neighbors, mesh)
    state = _initial_state(cfg, system, potential, params, key, optimizer, mesh, resume_meta)
    mngr = checkpoint.manager(ckpt_dir, cfg.train.keep)
    checkpoint.discard_after(mngr, resume_step)
    log.info("windows under the gradient: %s on each device (replicas.gradient_batching = %r)",
             {"vmap": "vectorised", "map": "one after another"}[assemble.gradient_batching(cfg)],
             cfg.replicas.gradient_batching)
    if resume_step is None:
        log.info("system: %d atoms, %d replicas on %d device(s) in %d process(es), %d frames per replica per "
                 "iteration", system.n_atoms, cfg.replicas.count, mesh.devices.size, jax.process_count(),
                 cfg.sampling.frames)
        state = _equilibrated(cfg, system, potential, mesh, state, counter, relist)
        start, failures = 0, 0
    else:
        state = checkpoint.restore(mngr, resume_step, state)
        start = int(resume_meta["iteration"])
        failures = int(resume_meta.get("failed_in_a_row", 0))
        counter.reallocations = int(resume_meta["neighbor_reallocations"])
        log.info("resuming from iteration %d (%s)", start, ckpt_dir)
        if resume_meta.get("optimizer") != cfg.optimizer.model_dump(mode="json"):
            log.info("optimizer settings changed on resume: %s -> %s", resume_meta.get("optimizer"),
                     cfg.optimizer.model_dump(mode="json"))

    iterate = _iteration(cfg, system, potential, objective, optimizer, mesh, counter, relist)
    metrics_path = workdir / "metrics.jsonl"
    if lead:
        checkpoint.truncate_metrics(metrics_path, start, "iteration")
    bar = progress_bar(cfg.train.iterations, "iterations", "it",
                       lead and (cfg.output.progress if progress is None else progress), initial=start)
    lost = None
    try:
        with StopFlag() as stop:
            if start < cfg.train.iterations and any_process(stop.signum is not None):
                raise Preempted(f"stopped by a preemption signal before iteration {start + 1} began; "
                                "rerun the same command to resume")
            for it in range(start, cfg.train.iterations):
                state, row = iterate(state, it)
                if lead:
                    checkpoint.append_metrics(metrics_path, row)
                bar.set_postfix(loss=f"{row['loss']:.4g}", **{k: f"{v:.4g}" for k, v in row["observables"].items()})
                bar.update()
                failures = failures + 1 if row["update_skipped"] else 0
                diverged = failures >= cfg.train.max_failed_iterations
                if row["update_skipped"]:
                    log.warning("iteration %d: update skipped (loss %.4g, gradient norm %.4g, %d of %d segments "
                                "failed; %d such iterations in a row, the run stops at train.max_failed_iterations "
                                "= %d)", it + 1, row["loss"], row["grad_norm"], row["masked_replicas"],
                                cfg.replicas.count * cfg.sampling.frames, failures, cfg.train.max_failed_iterations)
                last = it + 1 == cfg.train.iterations
                stopping = any_process(stop.signum is not None)  # every process stops after the same iteration
                if (it + 1) % cfg.train.checkpoint_every == 0 or last or stopping or diverged:
                    meta = {"kind": KIND, "iteration": it + 1, "capacity": int(state["chains"].neighbors.capacity),
                            "fingerprint": fingerprint(user_cfg), "window_steps": cfg.segments.steps,
                            "optimizer": cfg.optimizer.model_dump(mode="json"),
                            "neighbor_reallocations": counter.reallocations, "failed_in_a_row": failures,
                            **model_meta(potential, cfg.potential, system, cfg.dipole)}
                    checkpoint.save(mngr, it + 1, state, meta, np.inf if row["update_skipped"] else row["loss"])
                if diverged:
                    mngr.wait_until_finished()
                    raise Diverged("train.max_failed_iterations", f"{failures} iterations in a row (up to {it + 1}) "
                                   "had no finite loss and gradient: the dynamics fail (a time step too large for "
                                   "the potential, or atoms too close); their updates were skipped and every "
                                   "checkpoint holds finite parameters")
                if stopping and not last:
                    mngr.wait_until_finished()
                    raise Preempted(f"stopped by a preemption signal after iteration {it + 1}; checkpoint saved, "
                                    "rerun the same command to resume")
    except Exception as e:
        lost = peer_lost(e)
        raise
    finally:
        bar.close()
        if lost is None:  # orbax waits for every process in a barrier: for a lost one until the heartbeat timeout
            mngr.wait_until_finished()
            mngr.close()
    log.info("%d iterations done in %.1f s; results in %s", cfg.train.iterations - start,
             time.perf_counter() - t_start, workdir)
    return state["params"]


def _initial_state(cfg, system, potential, params, key, optimizer, mesh, resume_meta):
    """The training state before the first iteration, laid out over the mesh: parameters, optimizer state
    and best loss replicated, replica chains sharded (each process starts only its own).  On resume it is
    the template that the checkpoint is restored into (its lists have the saved capacity)."""
    offset, n_local = local_replicas(cfg.replicas.count, mesh)
    chains = assemble.chains(cfg, system, potential, params, key, n_local, offset)
    if resume_meta is not None:
        chains = dataclasses.replace(chains, neighbors=potential.neighbors.allocate(
            chains.position, capacity=resume_meta["capacity"]))  # the saved lists' shape
    barrier("set-up", cfg.distributed.setup_timeout)  # before the first collective (parallel.py)
    chains = from_process_local(chains, mesh)
    params, opt_state, best = replicate((params, optimizer.init(params), jnp.asarray(jnp.inf, params_dtype(params))),
                                        mesh)
    return {"params": params, "opt_state": opt_state, "chains": chains, "best_loss": best}


def _equilibrated(cfg, system, potential, mesh, state, counter, relist):
    """The state with every chain run for `sampling.equilibration_steps` (a fresh run's first step)."""
    nvt = assemble.sampler(cfg, system, potential)
    return state | {"chains": advance(nvt, potential, state["params"], state["chains"], cfg.sampling.equilibration_steps,
                                      counter, cfg.potential.capacity_factor, mesh, relist)}


def _iteration(cfg, system, potential, objective, optimizer, mesh, counter, relist):
    """iterate(state, it) -> (state, metrics row) for one training iteration: every replica continues its
    chain to `sampling.frames` start frames, the ensemble loss and its gradient over all their windows,
    one optax update."""
    n_rep, smp = cfg.replicas.count, cfg.sampling
    species = system.topology.species_names
    classical = cfg.potential.kind != "mpnn"
    nvt = assemble.sampler(cfg, system, potential)
    update = jax.jit(lambda g, s, p: _apply(optimizer, g, s, p))

    def frames_of_chain(p, chain):
        """One replica's `sampling.frames` start frames, `steps_between_frames` apart: (chain, frames)."""
        def frame(s, _):
            s = scan_steps(nvt.step, p, s, smp.steps_between_frames)[0]
            return s, s
        return jax.lax.scan(frame, chain, None, length=smp.frames)

    sample = per_device(frames_of_chain, mesh)  # (R, ...) chains -> (R, ...) chains, (R, F, ...) frames
    value_and_grad = sharded_value_and_grad(cfg, system, potential, objective, mesh)

    def iterate(state, it):
        t0 = time.perf_counter()
        chains, frames, (loss, preds, terms, count, windows_ok), grads = _checked_iteration(
            sample, value_and_grad, state["params"], state["chains"], relist, counter, cfg.potential.capacity_factor)
        grad_norm = float(_norm(grads))
        params, opt_state = update(grads, state["opt_state"], state["params"])
        # An iteration without a finite loss and gradient (every segment failed) is not applied, and neither
        # is an update that made a parameter non-finite: a checkpoint never holds one.
        host = jax.device_get(params)  # one read-back for the finiteness check and the row's hash
        failed = not (np.isfinite(float(loss)) and np.isfinite(grad_norm) and _finite(host))
        if failed:
            params, opt_state = state["params"], state["opt_state"]
            host = jax.device_get(params)
            # Nor are its chains kept: a chain that wandered where the potential blows up would hand the next
            # iteration the same frames.  They start again from before it, with fresh noise.
            chains = _restarted(state["chains"], chains, None, relist)
            restarted = int(chains.position.shape[0])
            log.warning("iteration %d failed: its update is skipped and every replica chain restarts from its "
                        "state before it, with fresh noise", it + 1)
        else:
            chains, restarted = _kept_chains(state["chains"], chains, windows_ok, relist)
        # The chains keep the largest list capacity any segment needed, so it persists in checkpoints.
        if frames.neighbors.capacity > chains.neighbors.capacity:
            chains = relist(chains, frames.neighbors.capacity)
        state = {"params": params, "opt_state": opt_state, "chains": chains,
                 "best_loss": state["best_loss"] if failed else jnp.minimum(state["best_loss"], loss)}
        row = {
            "iteration": it + 1, "loss": float(loss), "grad_norm": grad_norm,
            "seconds": time.perf_counter() - t0,
            "observables": {k: float(v) for k, v in preds.items() if np.ndim(v) == 0},
            "loss_terms": {k: float(v) for k, v in terms.items()},
            "params": flatten({k: v for k, v in host.items() if k != DIPOLE_KEY}, species) if classical else {},
            "params_sha256": params_sha256(host),
            "masked_replicas": int(n_rep * smp.frames - int(count)),
            "restarted_chains": restarted,
            "update_skipped": failed,
            "neighbor_reallocations": counter.reallocations,
        }
        return state, row

    return iterate


# One program instead of 45 single-op ones compiled in the first iteration (0.8 s on a 2-core CPU)
_norm = jax.jit(optax.tree.norm)


def _finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in jax.tree.leaves(tree))


@jax.jit
def _finite_replicas(chains):
    return jnp.all(jnp.isfinite(chains.position), axis=(1, 2)) & jnp.all(jnp.isfinite(chains.velocity), axis=(1, 2))


@jax.jit
def _restart(before, after, ok):
    """`after`'s replicas where `ok` (None: none), else `before`'s positions, velocities and forces (with
    `after`'s random keys, so that the restarted chain draws new noise)."""
    def pick(a, b):
        return b if ok is None else jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, b)
    return dataclasses.replace(after, position=pick(after.position, before.position),
                               velocity=pick(after.velocity, before.velocity), force=pick(after.force, before.force))


@jax.jit
def _good_chains(after, windows_ok):
    return _finite_replicas(after) & jnp.all(windows_ok, axis=1)


def _kept_chains(before, after, windows_ok, relist):
    """(chains, number restarted): a replica chain whose sampling went non-finite, or one of whose windows
    failed (non-finite, or blew up: `segments.max_energy_error`), starts again from where it stood before
    this iteration, with fresh noise, instead of staying where the potential fails (measured: a chain of the
    tiny ML water refinement that stayed there made all of its windows blow up, iteration after iteration)."""
    ok = _good_chains(after, windows_ok)
    restarted = int(ok.size - jnp.sum(ok))
    if not restarted:
        return after, 0
    log.warning("%d replica chain(s) went non-finite while sampling or had windows that failed; restarted from "
                "their state before this iteration, with fresh noise", restarted)
    return _restarted(before, after, ok, relist), restarted


def _restarted(before, after, ok, relist):
    """`_restart`, with neighbour lists built for the positions taken back."""
    chains = _restart(before, after, ok)
    return relist(chains, chains.neighbors.capacity)


def _resolved_window(cfg, system, potential, params, key, resume_meta):
    """The config with `segments.window = "auto"` resolved: scanned when a run starts, read from the
    checkpoint when it resumes (the run continues with the window it chose; the scan is not repeated)."""
    if cfg.segments.window != "auto":
        return cfg
    if resume_meta is None:
        return assemble.resolve_window(cfg, system, potential, params, key)[0]
    steps = int(resume_meta["window_steps"])
    log.info('segments.window = "auto": %d steps, as chosen when the run started', steps)
    return cfg.model_copy(update={"segments": cfg.segments.model_copy(update={"steps": steps, "window": None})})


def params_dtype(params):
    return jax.tree.leaves(params)[0].dtype


def _apply(optimizer, grads, opt_state, params):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def segment_statistics(cfg, system, potential, objective):
    """`one(params, frame, probe=None) -> (sums, ok, lists, energy)` for one start frame: the segment's additive
    statistics (zeroed when not finite), whether they are finite, the windows' neighbour lists (for the
    overflow check) and U_theta of the frame (reweighting; 0 when no target reweights)."""
    seg_cfg = cfg.segments
    seg = assemble.segment(cfg, system, potential, objective.channels)
    adjoint = assemble.adjoint(cfg)

    def statistics(params, probe, frame):
        context = frame_context(objective.channels, frame.position, frame.velocity)
        w = run_window(adjoint, seg, params, frame.position, frame.velocity, frame.neighbors, context,
                       seg_cfg.bidirectional, probe)
        sums = objective.segment_sums(w.records) | objective.frame_sums(frame.position)
        energy = (potential.energy(params, frame.position, frame.neighbors) if objective.reweighted
                  else jnp.zeros((), frame.position.dtype))
        # A segment that went non-finite is masked out of the ensemble and counted, never averaged in; so is one
        # whose NVE integration broke energy conservation (a window that blew up: in float32 its statistics
        # can stay finite while its gradient overflows and fails the whole iteration).
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves((sums, energy))]))
        if seg_cfg.max_energy_error is not None:
            drift = energy_error(potential, system.masses, params, frame.position, frame.velocity, frame.neighbors, w)
            ok = ok & (drift <= seg_cfg.max_energy_error)
        sums, energy = jax.tree.map(lambda a: jnp.where(ok, a, 0.0), (sums, energy))
        lists = (w.neighbors,) + ((w.neighbors_backward,) if seg_cfg.bidirectional else ())
        return (sums, energy), (ok, lists)

    def one(params, frame, probe=None):
        (sums, energy), (ok, lists) = failed_segments_without_gradient(statistics)(params, probe, frame)
        return sums, ok, lists, energy

    return one


def failed_segments_without_gradient(statistics):
    """`statistics(params, probe, frame) -> (values, (ok, aux))` whose gradient (with respect to params and
    the reverse-time adjoint's `probe`, see adjoint.run_segment) is exactly 0 where `ok` is False.
    `where(ok, values, 0)` alone zeroes the cotangent reaching a failed segment, but the backward pass
    through its non-finite trajectory turns that 0 into 0 * inf = nan, which the parameter gradient would
    sum with every good segment's; so the cotangents this segment returns are masked instead."""
    @jax.custom_vjp
    def guarded(params, probe, frame):
        return statistics(params, probe, frame)

    def forward(params, probe, frame):
        values, vjp, aux = jax.vjp(lambda p, q: statistics(p, q, frame), params, probe, has_aux=True)
        return (values, aux), (vjp, aux[0])

    def backward(residuals, cotangents):
        vjp, ok = residuals
        masked = jax.tree.map(lambda a: jnp.where(ok, a, jnp.zeros_like(a)), vjp(cotangents[0]))
        return (*masked, None)

    guarded.defvjp(forward, backward)
    return guarded


def sharded_value_and_grad(cfg, system, potential, objective, mesh):
    """jit(value_and_grad) of the ensemble loss; replicas sharded, parameters replicated."""
    one = segment_statistics(cfg, system, potential, objective)
    batching = assemble.gradient_batching(cfg)

    def local_loss(params, probes, frames):
        # Replicated parameters made device-varying: each device then accumulates its own parameter gradient
        # through the whole backward pass, and the transpose of this cast sums it over devices once.
        # Without it every parameter cotangent inside the adjoint's reverse scan is psummed at every step.
        params = jax.lax.pcast(params, AXIS, to="varying")
        # This device's (replica, frame) pairs as one batch (`replicas.gradient_batching`): vmapped, all of
        # their lists (and both halves of bidirectional windows) rebuild together (neighbors.py).
        flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), frames)
        sums, ok, lists, energies = over_frames(one, batching)(params, flat, probes.reshape(-1))
        total = jax.tree.map(lambda a: jax.lax.psum(jnp.sum(a, axis=0), AXIS), sums)
        count = jax.lax.psum(jnp.sum(ok.astype(jnp.int32)), AXIS)
        mean = jax.tree.map(lambda a: a / count, total)
        reweighted = objective.reweighted_mean(sums, ok, energies, AXIS) if objective.reweighted else None
        loss, preds, terms = objective.loss(mean, reweighted)
        ok = ok.reshape(frames.position.shape[:2])  # (replica, frame): which windows count
        return loss, (preds, terms, count, _list_check(frames.neighbors, lists, ok), ok)

    sharded = jax.shard_map(local_loss, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                            out_specs=(P(), (P(), P(), P(), P(), P(AXIS))), check_vma=True)
    gradients = jax.value_and_grad(sharded, argnums=(0, 1), has_aux=True)

    def value_and_grad(params, frames):
        # The gradient with respect to one zero "probe" per segment is that segment's reverse-time
        # reconstruction error, +inf where a neighbour list overflowed during the backward pass (adjoint.py):
        # the one way that overflow can reach the caller.
        probes = jnp.zeros(frames.position.shape[:2], frames.position.dtype)
        (loss, (preds, terms, count, check, ok)), (grads, errors) = gradients(params, probes, frames)
        return (loss, (preds, terms, count, check | {"backward_error": jnp.max(errors)}, ok)), grads

    return jax.jit(value_and_grad)


def _list_check(sampled, segment_lists, ok):
    """Did any neighbour list overflow, in sampling (the frames' lists: overflow is sticky, so they cover
    every sampling step) or in a segment, and the largest neighbour count each needed, over all devices:
    one all-reduce (a max over four integers) instead of host-side reductions of sharded flags.  Segments
    that failed (`ok` False, shaped (replica, frame)) are left out: positions gone to inf or nan make
    meaningless counts, and re-allocating for them would only grow every list."""
    def worst(lists, valid):
        return (jnp.any(jnp.stack([jnp.any(n.overflow & valid) for n in lists])).astype(jnp.int32),
                jnp.max(jnp.stack([jnp.max(jnp.where(valid, n.max_count, 0)) for n in lists])))
    flags = jax.lax.pmax(jnp.stack(worst([sampled], ok) + worst(segment_lists, ok.reshape(-1))), AXIS)
    return dict(zip(("sampling_overflow", "sampling_max_count", "segment_overflow", "segment_max_count"), flags))


def _checked_iteration(sample, value_and_grad, params, chains, relist, counter, capacity_factor):
    """Sample the frames, then the gradient on them, read back once: a neighbour list that overflowed
    during sampling is re-allocated larger on the chains and everything is redone; one that overflowed
    only in a segment, forward or backward, is re-allocated on the frames and the gradient redone (pairs
    are never dropped).
    Returns (chains after sampling, frames, (loss, predictions, terms, count, windows_ok), gradient)."""
    def attempt(todo):
        chains, sampled, frames = todo  # frames None: sample them first
        if frames is None:
            sampled, frames = sample(params, chains)
        (loss, (preds, terms, count, check, ok)), grads = value_and_grad(params, frames)
        check = jax.device_get(check)  # the iteration's one host read-back
        if check["sampling_overflow"]:
            return None, (relist(chains, grown_capacity(int(check["sampling_max_count"]), capacity_factor)), None, None)
        if check["segment_overflow"]:
            return None, (chains, sampled, relist(frames, grown_capacity(int(check["segment_max_count"]), capacity_factor)))
        if np.isinf(check["backward_error"]):
            # The backward pass rebuilds its lists at other moments than the forward pass, so it may need a
            # slot more; its count does not reach the host: grow by a tenth (at least one slot).
            capacity = frames.neighbors.capacity
            return None, (chains, sampled, relist(frames, max(capacity + 1, grown_capacity(capacity, 1.1))))
        return (sampled, frames, (loss, preds, terms, count, ok), grads), None
    return retry_on_overflow(attempt, (chains, None, None), counter)
