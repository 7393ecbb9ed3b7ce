"""JAX's persistent compilation cache: a rerun (resume after preemption, a requeued SLURM job, the same
config again) loads its compiled XLA programs instead of compiling them again.  Compiling dominates short
runs: the 64-atom `configs/tiny_argon_train.toml` takes 54 s cold and 15 s warm on 2 CPU cores.

`output.compilation_cache = "auto"` (the default) turns it on for GPUs and TPUs only.  On the CPU backend
of the pinned XLA, every cached program loads with an error-level log line about tuning features
(openxla/xla#44565; the program itself is fine), and a CPU cache shared by nodes with different
instruction sets could hand one node code it cannot execute.  A cache hit is the same executable a fresh
compile produces, so results are bit-identical (the test suite resumes from cached programs).  Only
process 0 writes entries (JAX's rule); on CPUs the other processes' cache keys differ from process 0's
even for the global programs (they include the topology as each process sees it), so in a multi-process
CPU run they compile everything on every start.  An entry cut off by kill -9 is reported and compiled
again.  A workflow (dmd_dist/workflows) gives its commands one cache of their own on a CPU, in its output
directory, and drops the log lines from their output.
"""

import os
from pathlib import Path

import jax

ENV = "JAX_COMPILATION_CACHE_DIR"


def cache_directory(setting, platform, env=None):
    """The directory `output.compilation_cache = setting` means on `platform` ("cpu", "gpu", ...), or None."""
    env = os.environ if env is None else env
    if env.get(ENV):
        return Path(env[ENV])
    if setting == "off" or (setting == "auto" and platform == "cpu"):
        return None
    if setting in ("auto", "user"):
        return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dmd-dist" / "xla"
    return Path(setting).expanduser()


def use_compilation_cache(setting):
    """Turn the cache on as `setting` says (before the first compilation); returns its directory or None."""
    path = cache_directory(setting, jax.devices()[0].platform)
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # Every program, not only those that took over 1 s (JAX's default): a short run compiles a hundred
        # programs of a fraction of a second each, a few MB in all.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
