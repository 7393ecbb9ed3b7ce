"""dmd_dist/checkpoint.py without a training run: which steps a manager keeps, what a reader restores (and
that it creates nothing), and metrics rows past the resumed checkpoint."""

import json

import numpy as np
import pytest

from dmd_dist import checkpoint
from dmd_dist.checkpoint import truncate_metrics

LOSSES = [0.5, 0.1, 0.4, 0.3, 0.2]  # step 2 is the best


@pytest.mark.parametrize("keep_best, kept", [(True, [2, 4, 5]), (False, [4, 5])])
def test_manager_keeps_the_latest_and_the_best(tmp_path, keep_best, kept):
    mngr = checkpoint.manager(tmp_path / "ckpt", keep=2, keep_best=keep_best)
    for step, loss in enumerate(LOSSES, 1):
        checkpoint.save(mngr, step, {"x": np.full(3, float(step))}, {"iteration": step}, loss)
    mngr.wait_until_finished()
    mngr.close()
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == kept
    assert checkpoint.latest_meta(tmp_path / "ckpt") == (5, {"iteration": 5})
    with checkpoint.reading(tmp_path / "ckpt") as reader:
        state = checkpoint.restore(reader, kept[0], {"x": np.zeros(3)})
    np.testing.assert_array_equal(state["x"], np.full(3, float(kept[0])))


def test_a_reader_of_a_missing_directory_creates_nothing(tmp_path):
    assert checkpoint.latest_meta(tmp_path / "none") == (None, None)
    with checkpoint.reading(tmp_path / "none") as reader:
        assert reader.latest_step() is None
    assert not (tmp_path / "none").exists()


def test_rows_after_the_checkpoint_and_a_cut_off_line_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = "".join(json.dumps({"iteration": i, "loss": 0.5}) + "\n" for i in range(1, 5))
    path.write_text(rows + '{"iteration": 5, "lo')  # kill -9 in the middle of a write
    truncate_metrics(path, 2, "iteration")
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2]
    before = path.stat().st_mtime_ns
    truncate_metrics(path, 7, "iteration")  # nothing past the checkpoint: the file is left alone
    assert path.stat().st_mtime_ns == before and path.read_text().count("\n") == 2
    truncate_metrics(tmp_path / "absent.jsonl", 3, "step")  # a fresh run has none
    assert not (tmp_path / "absent.jsonl").exists()


@pytest.mark.parametrize("damage", ["truncated", "emptied", "meta missing"])
def test_an_unreadable_latest_step_falls_back_to_the_one_before_and_is_discarded(tmp_path, damage, caplog):
    """A latest step whose files were cut short, whose state files are gone, or whose meta is gone (a disk
    that filled up, a filesystem that lost the end of a save): `latest_meta` warns and returns the step
    before it; `discard_after` then deletes the damaged step, so that the resumed run can save it again."""
    mngr = checkpoint.manager(tmp_path / "ckpt", keep=3, keep_best=False)
    for step in (1, 2, 3):
        checkpoint.save(mngr, step, {"x": np.full(1000, float(step))}, {"iteration": step})
    mngr.wait_until_finished()
    mngr.close()
    step3 = tmp_path / "ckpt" / "3"
    files = [p for p in step3.rglob("*") if p.is_file()]
    if damage == "truncated":
        for p in (p for p in files if "state" in p.parts):
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif damage == "emptied":
        for p in (p for p in files if "state" in p.parts):
            p.unlink()
    else:
        (step3 / "meta" / "metadata").unlink()
    with caplog.at_level("WARNING", "dmd_dist"):
        assert checkpoint.latest_meta(tmp_path / "ckpt") == (2, {"iteration": 2})
    assert "checkpoint step 3 in" in caplog.text and "cannot be read" in caplog.text
    mngr = checkpoint.manager(tmp_path / "ckpt", keep=3, keep_best=False)
    checkpoint.discard_after(mngr, 2)
    checkpoint.save(mngr, 3, {"x": np.full(1000, 7.0)}, {"iteration": 3})  # the resumed run saves step 3 again
    mngr.wait_until_finished()
    mngr.close()
    assert checkpoint.latest_meta(tmp_path / "ckpt") == (3, {"iteration": 3})
