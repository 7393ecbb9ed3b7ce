"""The persistent compilation cache: which directory each setting means, and that a run writes programs
there (the resume tests of test_train.py show that cached programs give bit-identical results)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmd_dist.compilation_cache import cache_directory

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("setting, platform, env, expected", [
    ("auto", "gpu", {"HOME": "/h"}, "/h/.cache/dmd-dist/xla"),
    ("auto", "cpu", {"HOME": "/h"}, None),  # see the module: XLA:CPU's cache loads are noisy and host-specific
    ("user", "cpu", {"HOME": "/h"}, "/h/.cache/dmd-dist/xla"),
    ("user", "gpu", {"XDG_CACHE_HOME": "/c"}, "/c/dmd-dist/xla"),
    ("/scratch/xla", "cpu", {}, "/scratch/xla"),
    ("off", "gpu", {}, None),
    ("off", "cpu", {"JAX_COMPILATION_CACHE_DIR": "/e"}, "/e"),  # the environment wins
    ("/scratch/xla", "gpu", {"JAX_COMPILATION_CACHE_DIR": "/e"}, "/e"),
])
def test_settings_name_the_directory(monkeypatch, setting, platform, env, expected):
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: Path(env.get("HOME", "/home/u"))))
    got = cache_directory(setting, platform, env)
    assert (None if got is None else str(got)) == expected


SNIPPET = """
import sys, jax, jax.numpy as jnp
from dmd_dist.compilation_cache import use_compilation_cache
print(use_compilation_cache(sys.argv[1]))
print(float(jax.jit(lambda x: jnp.sum(jnp.sin(x) ** 2))(jnp.arange(5.0))))
"""


def run_snippet(setting, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XDG_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(home))
    r = subprocess.run([sys.executable, "-c", SNIPPET, setting], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.split()


def test_a_compilation_writes_the_directory_and_off_writes_nothing(tmp_path):
    home = tmp_path / "home"
    path, value = run_snippet("user", home)
    assert path == str(home / ".cache/dmd-dist/xla") and any(Path(path).iterdir())
    assert run_snippet("user", home) == [path, value]  # a cache hit: the same value
    other = tmp_path / "other"
    assert run_snippet("off", other) == ["None", value] and not other.exists()
