"""`--device` for the benchmarks: which of JAX's platforms runs their programs.

`auto` is JAX's own choice (a GPU when the `cuda` extra finds one, else the CPU), `cpu` and `gpu` restrict
JAX to that platform (`gpu` stops with exit code 2 at once when JAX finds none).  Every benchmark records
`jax.default_backend()` and `jax.devices()` in its JSON, so a result says where it ran.
"""

import os
import sys

PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}


def add_argument(ap, default="auto"):
    ap.add_argument("--device", choices=("auto", *PLATFORMS), default=default,
                    help="where JAX runs: auto (its default), cpu, or gpu (the cuda extra; fails without a GPU)")


def select(device):
    """Restrict JAX to `device`'s platform, before its first computation; subprocesses inherit the choice."""
    if device not in PLATFORMS:
        return
    os.environ["JAX_PLATFORMS"] = PLATFORMS[device]
    if "jax" in sys.modules:  # imported already: the environment variable was read at import
        sys.modules["jax"].config.update("jax_platforms", PLATFORMS[device])
    if device == "gpu":
        import jax

        try:
            jax.devices()
        except Exception as e:  # jaxlib without a CUDA plugin fails with a bare AssertionError
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            print(f"error: --device gpu: JAX finds no GPU ({why}); the cuda extra "
                  "(bash launch/setup.sh cuda) on a machine with an NVIDIA GPU provides one", file=sys.stderr)
            raise SystemExit(2)
