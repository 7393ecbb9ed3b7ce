import jax
import jax.numpy as jnp
import numpy as np

from dmd_dist import space


def test_minimum_image_displacement():
    disp = space.periodic(jnp.array([2.0, 3.0, 4.0]))
    d = disp(jnp.array([1.9, 0.1, 3.9]), jnp.array([0.1, 2.9, 0.1]))
    np.testing.assert_allclose(d, [-0.2, 0.2, -0.2], atol=1e-12)
    # Unwrapped coordinates many boxes away give the same vector.
    d2 = disp(jnp.array([1.9 + 6.0, 0.1 - 9.0, 3.9 + 40.0]), jnp.array([0.1, 2.9, 0.1]))
    np.testing.assert_allclose(d2, d, atol=1e-12)


def test_safe_norm_has_finite_second_derivatives_at_masked_zero():
    d = jnp.zeros((2, 3)).at[1].set(jnp.array([0.3, 0.4, 0.0]))
    mask = jnp.array([False, True])

    def f(d):
        return jnp.sum(space.safe_norm(d, mask) ** 3)

    g = jax.grad(f)(d)
    h = jax.hessian(f)(d)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(h))
    np.testing.assert_allclose(space.safe_norm(d, mask), [0.0, 0.5])


def test_wrap_molecules_keeps_molecules_whole_with_centres_in_box():
    box = jnp.array([1.0, 1.0, 1.0])
    x = jnp.array([[0.95, 0.5, 0.5], [1.05, 0.5, 0.5], [-0.3, 2.2, 0.5], [-0.2, 2.2, 0.5]])
    mol = jnp.array([0, 0, 1, 1])
    w = space.wrap_molecules(x, box, mol, jnp.ones(4), 2)
    np.testing.assert_allclose(w[1] - w[0], x[1] - x[0], atol=1e-12)  # intact
    np.testing.assert_allclose(w[3] - w[2], x[3] - x[2], atol=1e-12)
    np.testing.assert_allclose(w[2:].mean(0), [0.75, 0.2, 0.5], atol=1e-12)
    assert np.all((w[:2].mean(0) >= 0) & (w[:2].mean(0) < 1))
