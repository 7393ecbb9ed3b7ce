"""orbax checkpoints of a training run: everything needed to continue it bit for bit.

State (arrays): model parameters, optimizer state, every replica's sampler state (positions,
velocities, forces, neighbour list, RNG key), the best loss.  Meta (JSON): iteration, neighbour-list
capacity (the shape of the saved lists), and the fingerprint of what defines the model and the state,
which a resume must match.  orbax commits a step atomically, so a `kill -9` leaves the previous step.
The managers, readers, resume check and metrics writer here serve pretraining's checkpoints too: every
checkpoint's meta names the command that wrote it (`kind`) and the fingerprint of its config.
"""

import contextlib
import json
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from dmd_dist.errors import InputError

log = logging.getLogger("dmd_dist")


def manager(directory, keep, keep_best=True):
    """For saving (asynchronously): keeps the latest `keep` steps, plus the one with the lowest loss
    (`save`'s `loss`) if `keep_best`.  Creates `directory` (with every process: a collective)."""
    policy = policies.LatestN(n=keep)
    if keep_best:
        policy = policies.AnyPreservationPolicy(
            [policy, policies.BestN(get_metric_fn=lambda m: m["loss"], reverse=True, n=1)])
    # cleanup_tmp_directories: a save that kill -9 interrupted leaves a temporary directory (never read
    # as a step); the next run removes it.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=True,
                                           create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(Path(directory).resolve(), options=options)


@contextlib.contextmanager
def reading(directory):
    """A manager that only restores: it creates nothing (orbax's own read_only option logs a warning on
    every use, so it is not used) and is closed on leaving."""
    options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
    mngr = ocp.CheckpointManager(Path(directory).resolve(), options=options)
    try:
        yield mngr
    finally:
        mngr.close()


def save(mngr, step, state, meta, loss=None):
    """Save `state` (arrays) and `meta` (JSON) as `step`; `loss` ranks it for a `keep_best` manager."""
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              metrics=None if loss is None else {"loss": float(loss)})


def latest_meta(directory):
    """(step, meta) of the newest checkpoint in `directory` that reads back whole, or (None, None) if there
    is none.  A step that does not (files truncated or deleted under it: a disk that filled up, a kill
    the filesystem did not survive) is passed over with a warning for the one before it."""
    if not Path(directory).is_dir():
        return None, None
    with reading(directory) as mngr:
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
                restore_arrays(directory, step)  # every array, so that a damaged one is found now
                return step, meta
            except Exception as e:  # orbax and tensorstore raise many kinds; any means "unreadable"
                log.warning("checkpoint step %d in %s cannot be read (%s: %s); trying the one before it",
                            step, directory, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
    return None, None


def discard_after(mngr, step):
    """Delete the steps after `step` (all if None): unreadable ones `latest_meta` passed over, which a
    resumed run would otherwise collide with when it saves those steps again."""
    for s in mngr.all_steps():
        if step is None or s > step:
            log.warning("deleting unreadable checkpoint step %d", s)
            mngr.delete(s)


def restore(mngr, step, template=None):
    """The saved state in `template`'s structure, shapes and shardings (as saved, if None)."""
    abstract = None if template is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state


def restore_arrays(directory, step):
    """The saved state of `step` as numpy arrays on the host, whatever devices saved it: for reading a model
    out of a run (a GPU job's refined network on a laptop), where `restore` needs the saving topology."""
    # The item's handler itself, not a Checkpointer: that would look for step metadata inside the item
    # directory and log a warning that it is missing.
    path = epath.Path(Path(directory).resolve() / str(step) / "state")
    handler = ocp.PyTreeCheckpointHandler()
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), handler.metadata(path).tree)
    return handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def resume_point(directory, kind, fingerprint):
    """(step, meta) of the checkpoint in `directory` to resume, or (None, None) if there is none.  Refuses
    (InputError naming the first differing config key) a checkpoint that another command wrote, or whose
    fingerprint (what defines the model and the training state) differs from `fingerprint`."""
    step, meta = latest_meta(directory)
    if step is None:
        return None, None
    if meta.get("kind", "dmd-dist train") != kind:  # train checkpoints once carried no kind
        raise InputError("--workdir", f"{directory} holds checkpoints of another command ({meta.get('kind')!r}, "
                                      f"not {kind!r})")
    if meta["fingerprint"] != fingerprint:
        changed = first_difference(meta["fingerprint"], fingerprint, "config").removeprefix("config.")
        raise InputError(changed, f"differs from the checkpoint in {directory} (it defines the model and the "
                                  "training state; use a new --workdir to change it)")
    return step, meta


def append_metrics(path, row):
    """One JSON line per row; a resumed run first drops what the killed one wrote past its checkpoint
    (`truncate_metrics`)."""
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(path, last, key):
    """Keep the metrics.jsonl rows up to row[key] == `last`: rows a killed run wrote after the checkpoint
    being resumed (the last possibly cut off mid-line) are dropped, and the resumed run writes them again."""
    path = Path(path)
    if not path.is_file():
        return
    text = path.read_text()
    keep = []
    for line in text.splitlines():
        try:
            if json.loads(line)[key] > last:
                break
        except ValueError:  # a line cut off by kill -9
            break
        keep.append(line + "\n")
    if "".join(keep) != text:
        path.write_text("".join(keep))


def first_difference(a, b, prefix):
    """The dotted key of the first place where two nested dicts (config fingerprints) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{prefix}.{k}")
    return prefix
