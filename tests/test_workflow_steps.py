"""dmd_dist/workflows/steps.py: the commands of a workflow, run side by side where they do not depend on each
other, in the order started, each after the steps it waits for."""

import os
import threading
from pathlib import Path

import pytest

from dmd_dist.workflows.steps import StepFailed, Steps

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
