"""Resume bookkeeping of train/checkpoint.py that needs no run: metrics rows past the resumed checkpoint."""

import json

from dmd_dist.train.checkpoint import truncate_metrics


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
