"""The fault suite's property runs (issue 15), on demand: `pytest -m faults_long tests/integration/test_fault_matrix.py`
(launch/test.sh and so CI leave them out: the whole matrix takes hours on 2 cores).  Every case of
benchmarks/faults.py (kill -9 at random moments and during a save; SIGTERM during start-up, sampling, the
gradient and a save, to one process or all; kill -9 of either rank of two) for LJ and the MPNN on 1 and 2
processes, DMD_FAULT_SEEDS seeds each (default 10): every trial must end as its case demands and resume
bit-identical to the uninterrupted run.  CI runs one trial of the cases nothing else covers: the kill -9
and the SIGTERM during a save (tests/test_train.py), the two-process SIGTERM to one rank and kill -9 of rank 1
(test_multiprocess.py), kill -9 of rank 0 (test_rank_death.py)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import faults  # noqa: E402

SEEDS = int(os.environ.get("DMD_FAULT_SEEDS", "10"))


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    runs = {}

    def reference(model, processes):
        if (model, processes) not in runs:
            runs[model, processes] = faults.reference_run(model, processes, tmp_path_factory.mktemp("reference"))
        return runs[model, processes]

    return reference


@pytest.mark.faults_long
@pytest.mark.parametrize("case,model,processes", [(case, model, processes) for processes in (1, 2)
                                                  for model in ("lj", "mpnn")
                                                  for case in faults.cases_for(faults.ALL_CASES, processes)])
def test_every_fault_resumes_bit_identical(tmp_path, references, case, model, processes):
    failures = []
    for seed in range(SEEDS):
        work = tmp_path / f"seed{seed}"
        work.mkdir()
        r = faults.trial(case, model, processes, seed, references(model, processes), work)
        if not (r["ok"] and r["identical"]):
            failures.append({"seed": seed, **r})
    assert not failures, failures
