"""dmd_dist/workflows/steps.py: the commands of a workflow, run side by side where they do not depend on each
other, in the order started, each after the steps it waits for."""

import os
import threading
from pathlib import Path

import pytest

from dmd_dist.workflows.steps import StepFailed, Steps, forward_stderr

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_step_fails_the_steps_after_it_and_the_others_still_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    checked = []
    with pytest.raises(StepFailed, match="exit code 2 from: dmd-dist plot .*missing"), Steps(env, False, 2) as step:
        missing = step.start(["plot", tmp_path / "missing"], lambda: False)  # exit 2: no such run directory
        after = step.start(["plot", tmp_path / "never"], lambda: checked.append("after") or False, [missing])
        beside = step.start(["plot", tmp_path / "beside"], lambda: checked.append("beside") or True)  # done: skipped
        step.wait()
    with pytest.raises(StepFailed, match="missing"):
        after.result()  # never ran: the step it waits for failed
    assert beside.result() is None and checked == ["beside"]
    assert [c.split()[-1] for c in step.commands] == [str(tmp_path / n) for n in ("missing", "never", "beside")]


def test_leaving_by_an_exception_starts_nothing_more(tmp_path):
    """An error in the workflow itself (here while the first step runs) starts no step that has not started."""
    env, release = dict(os.environ, PYTHONPATH=str(ROOT)), threading.Event()
    threading.Timer(0.5, release.set).start()
    with pytest.raises(RuntimeError, match="the workflow's own error"), Steps(env, False, 1) as step:
        first = step.start(["plot", tmp_path / "first"], lambda: release.wait(10))  # done after 0.5 s
        second = step.start(["plot", tmp_path / "second"], lambda: pytest.fail("the second step ran"))
        raise RuntimeError("the workflow's own error")
    assert first.result() is None
    assert second.cancelled()


def test_a_call_runs_after_its_steps_and_returns_its_value(tmp_path):
    """`call` runs the workflow's own function in a slot beside the commands, after the steps it waits for;
    after a failed step it does not run."""
    env, order = dict(os.environ, PYTHONPATH=str(ROOT)), []
    with pytest.raises(StepFailed, match="missing"), Steps(env, False, 2) as step:
        first = step.start(["plot", tmp_path / "first"], lambda: order.append("first") or True)
        value = step.call(lambda: order.append("call") or 42, [first])
        missing = step.start(["plot", tmp_path / "missing"], lambda: False)
        never = step.call(lambda: order.append("never"), [missing], "never")
        step.wait()
    assert value.result() == 42 and order == ["first", "call"]
    with pytest.raises(StepFailed, match="missing"):
        never.result()


class Chunks:
    """A pipe that delivers `chunks` one read at a time."""

    def __init__(self, chunks):
        self.chunks = list(chunks)

    def read1(self, _size):
        return self.chunks.pop(0) if self.chunks else b""


BENIGN_LINE = (b"E1207 15:10:34.580590    8710 cpu_aot_loader.cc:195] Loading XLA:CPU AOT result. Target machine "
               b"feature +prefer-no-scatter is not  supported on the host machine. Machine type used for XLA:CPU "
               b"compilation doesn't match ... This could lead to execution errors such as SIGILL.\n")


def test_a_commands_stderr_passes_without_the_cache_loaders_benign_lines_and_progress_bars_pass_at_once():
    """The cache-load line (compilation_cache.py) is dropped even when a chunk ends inside it; everything else,
    other error lines included, arrives unchanged, a progress bar's carriage-return update as soon as it is
    read, a character split between two chunks whole."""
    sigma = "σ ± 0.3\n".encode()
    chunks = [b"pretrain:  10%|#  | 500/5000\r", BENIGN_LINE[:40], BENIGN_LINE[40:] + b"E1207 other error\n",
              BENIGN_LINE + sigma[:1], sigma[1:] + b"tail without newline"]
    seen = []

    class Sink:
        def write(self, text):
            seen.append(text)

        def flush(self):
            pass

    forward_stderr(Chunks(chunks), Sink())
    assert seen[0] == "pretrain:  10%|#  | 500/5000\r"  # at once, not held until a newline
    assert "".join(seen) == "pretrain:  10%|#  | 500/5000\rE1207 other error\nσ ± 0.3\ntail without newline"


def test_on_a_cpu_the_commands_share_one_compilation_cache_of_the_run_unless_one_is_set(tmp_path, monkeypatch):
    import dmd_dist.workflows as workflows

    wf = workflows.WORKFLOWS["water-ir-mpnn-tiny"]
    monkeypatch.setattr(workflows, "default_jobs", lambda: 2)  # no accelerator plugin
    env = workflows.command_env(wf, tmp_path, {"XLA_FLAGS": "--xla_cpu_foo=1"})
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "xla-cache")
    assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2"
    assert workflows.command_env(wf, tmp_path, {"JAX_COMPILATION_CACHE_DIR": "/mine"})["JAX_COMPILATION_CACHE_DIR"] == "/mine"
    monkeypatch.setattr(workflows, "default_jobs", lambda: 1)  # an accelerator: "auto" keeps the user's cache
    assert "JAX_COMPILATION_CACHE_DIR" not in workflows.command_env(wf, tmp_path, {})
