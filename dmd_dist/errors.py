"""The exceptions the CLI turns into exit codes with one line `error: KEY: PROBLEM`, without a traceback:
`InputError` for bad user input (config, structure file, CLI, resume mismatch): exit code 2;
`Diverged` for a run that stopped because its dynamics kept failing numerically: exit code 4.
"""


class InputError(ValueError):
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class Diverged(RuntimeError):
    """Training stopped: `train.max_failed_iterations` iterations in a row had no finite loss and gradient
    (every checkpoint still holds finite parameters: failed updates are skipped); or every window of a
    `simulate` run failed `segments.max_energy_error`."""
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
