"""The one exception type for bad user input (config, structure file, CLI, resume mismatch).

The CLI turns it into exit code 2 and one line `error: KEY: PROBLEM`, without a traceback.
"""


class InputError(ValueError):
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
