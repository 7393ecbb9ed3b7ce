"""The public API (dmd_dist/__init__.py) and the README's library example, run as written."""

import contextlib
import io
import re
from pathlib import Path

import jax
import numpy as np

import dmd_dist as dd

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example():
    """The first python block of the README's "Library use" section."""
    text = README.read_text()
    section = text[text.index("## Library use"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_every_public_name_exists():
    missing = [name for name in dd.__all__ if not hasattr(dd, name)]
    assert not missing


def test_readme_library_example_gives_the_direct_backprop_gradient_of_a_plausible_d():
    namespace = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    assert "sigma" in out.getvalue() and "epsilon" in out.getvalue()  # it printed D and the gradient
    diffusion, params = namespace["diffusion"], namespace["params"]
    d = float(diffusion(params))
    # One 0.5 ps window of 108 atoms: liquid argon's D is 2.4e-3 nm^2/ps; one frame scatters by tens of %.
    assert 1.0e-3 < d < 4.5e-3
    adjoint = jax.grad(diffusion)(params)
    direct = jax.grad(lambda p: diffusion(p, dd.DirectAdjoint()))(params)
    for a, b in zip(jax.tree.leaves(adjoint), jax.tree.leaves(direct)):
        assert np.all(np.asarray(b) != 0)
        np.testing.assert_allclose(a, b, rtol=1e-8)
