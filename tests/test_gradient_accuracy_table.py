"""benchmarks/gradient_accuracy.py's table: the rows docs/gradient_accuracy.md shows, from a run's JSON."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gradient_accuracy", ROOT / "benchmarks/gradient_accuracy.py")
accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(accuracy)


def test_a_row_per_window_and_parameter_with_the_runs_numbers():
    term = {"value": -0.0438, "stderr": 0.00075}
    out = {"windows": [{"window_ps": 0.25, "D": 3.1325e-3, "D_stderr": 3.84e-5, "seconds": 79.6, "params": {
        "lj.sigma": {"dynamics": term, "reweighting": {"value": 0.035, "stderr": 0.0344},
                     "total": {"value": -0.00885, "stderr": 0.0341}, "finite_difference": {"value": -0.025, "stderr": 0.0046},
                     "total_minus_fd_in_stderr": 0.4696, "dynamics_minus_fd_in_stderr": -4.011}}}]}
    assert accuracy.table_rows(out) == [
        "| 0.25 | 3.132 ± 0.038 | lj.sigma | -0.0438 ± 0.00075 | 0.035 ± 0.034 | -0.00885 ± 0.034 | -0.025 ± 0.0046 "
        "| +0.47 | -4.01 | 80 |"]
    # A run that samples once for every window times the run as a whole.
    shared = {"seconds": 2261.4, "windows": [{k: v for k, v in out["windows"][0].items() if k != "seconds"}]}
    assert accuracy.table_rows(shared)[0].endswith("| +0.47 | -4.01 | 2261 (all windows) |")


def test_runs_are_grouped_by_parameter_point_and_plotted_against_the_window(tmp_path):
    """Rows of separate runs at one point join by window length; another point is another panel row."""
    def run(sigma, windows):
        term = {"value": -0.05, "stderr": 0.01}
        return {"windows": [{"window_ps": t, "params": {"lj.sigma": {
            "value": sigma, **{k: term for k in ("dynamics", "reweighting", "total", "finite_difference")}}}}
            for t in windows]}
    points = accuracy.parameter_points([{"a": run(0.338, [0.5]), "b": run(0.338, [0.25])}, run(0.34, [0.25, 1.0])])
    assert {k: [w["window_ps"] for w in rows] for k, rows in points.items()} == {
        (("lj.sigma", 0.338),): [0.25, 0.5], (("lj.sigma", 0.34),): [0.25, 1.0]}
    png = accuracy.plot_terms([run(0.338, [0.25, 0.5])], tmp_path / "fig.png")
    assert png.stat().st_size > 10_000
