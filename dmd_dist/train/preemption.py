"""The preemption protocol shared by `train` and `pretrain`: SIGTERM or SIGUSR1 (what SLURM sends before
a time limit, and schedulers on preemption) is remembered, the loop finishes the step in flight, saves a
checkpoint and raises `Preempted`; the CLI turns that into exit code 3 ("rerun to resume")."""

import logging
import signal

log = logging.getLogger("dmd_dist")

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A preemption signal arrived; the run saved a checkpoint and should exit with code 3."""


class StopFlag:
    """Remembers a preemption signal; the loop finishes the iteration in flight, saves and stops.

    The CLI enters one around a whole `train` or `pretrain`, so that a signal during start-up (distributed
    initialisation, compilation, teacher sampling) stops the run cleanly instead of killing it.  A StopFlag
    entered while another is active shares that one's flag but takes the signals again until it exits:
    `jax.distributed.initialize` installs a SIGTERM handler of its own (its preemption notifier), which
    would otherwise swallow the signal (found by the SLURM tests: the job ran on to the end)."""

    _active = None

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._shared = None

    def __enter__(self):
        self._shared = StopFlag._active or self
        if StopFlag._active is None:
            StopFlag._active = self
        for s in PREEMPTION_SIGNALS:
            self._previous[s] = signal.signal(s, self._shared._handle)
        return self._shared

    def _handle(self, signum, frame):
        self.signum = signum
        log.warning("received %s: stopping after the current iteration", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
        if StopFlag._active is self:
            StopFlag._active = None
