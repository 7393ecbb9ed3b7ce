import jax.numpy as jnp
import pytest

from dmd_dist.params import assign, flatten, perturb


def test_flatten_names_species_and_types_and_perturb_moves_one_scalar():
    params = {"lj": {"sigma": jnp.array([0.3]), "epsilon": jnp.array([0.6, 0.0])},
              "bond": {"k": jnp.array([1.0, 2.0, 3.0])}}
    flat = flatten(params, ("O", "H"))
    assert flat == {"bond.k[0]": 1.0, "bond.k[1]": 2.0, "bond.k[2]": 3.0, "lj.epsilon[O]": 0.6,
                    "lj.epsilon[H]": 0.0, "lj.sigma": 0.3}
    moved = flatten(perturb(params, "lj.epsilon[H]", 0.5, ("O", "H")), ("O", "H"))
    assert moved == {**flat, "lj.epsilon[H]": 0.5}


def test_assign_sets_named_scalars_and_refuses_unknown_names():
    params = {"lj": {"sigma": jnp.array([0.3]), "epsilon": jnp.array([0.6, 0.0])}}
    out = flatten(assign(params, {"lj.epsilon[H]": 0.2, "lj.sigma": 0.31}, ("O", "H")), ("O", "H"))
    assert out == {"lj.epsilon[O]": 0.6, "lj.epsilon[H]": 0.2, "lj.sigma": 0.31}
    with pytest.raises(KeyError, match="lj.eps"):
        assign(params, {"lj.eps": 1.0}, ("O", "H"))
