"""The `[optimizer]` section (dmd_dist/train/optimizer.py) on known gradients with hand-computed updates:
Adam's first two steps and SGD's step per parameter group, the longest-prefix / `default` lookup, update
clips that cap each element of the update (not the gradient, not a global norm), non-finite gradients
skipped, and table keys that name no parameter refused with an InputError naming the key."""

import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist.config import OptimizerConfig, load_config, validate
from dmd_dist.errors import InputError
from dmd_dist.params import leaf_paths
from dmd_dist.train.optimizer import check_tables, make_optimizer

BASE = {"system": {"kind": "lj_fluid", "n_atoms": 10, "box": 2.0},
        "potential": {"sigma": 0.34, "epsilon": 1.0}, "sampling": {"temperature": 94.4}}

# optax.adam's defaults, written out: the expected steps below are computed from them by hand.
B1, B2, EPS = 0.9, 0.999, 1e-8


def params_and_grads():
    """A parameter tree shaped like the project's ({"lj": {...}} from lennard_jones_potential, charges,
    a list of MPNN blocks) and a fixed gradient with mixed signs and magnitudes."""
    params = {"lj": {"sigma": jnp.array([0.338]), "epsilon": jnp.array([0.8938])},
              "coulomb": {"charge": jnp.array([-0.8, 0.4])},
              "mpnn": {"blocks": [{"kernel": jnp.array([[0.1, -0.2], [0.3, 0.4]])}]}}
    grads = {"lj": {"sigma": jnp.array([3.0])}, "coulomb": {"charge": jnp.array([2.5, -4e-4])},
             "mpnn": {"blocks": [{"kernel": jnp.array([[1e-3, -7.0], [0.25, -0.5]])}]}}
    grads["lj"]["epsilon"] = jnp.array([-0.02])
    return params, grads


def flat(tree):
    return dict(zip(leaf_paths(tree), (np.asarray(a, float) for a in jax.tree.leaves(tree))))


def optimizer_config(**section):
    """The optimizer section as the Config model validates it (the same path as a TOML file)."""
    return validate({**BASE, "optimizer": section}).optimizer


def adam_first(lr, g):
    # m1 = (1 - b1) g, v1 = (1 - b2) g^2; bias corrected m = g, v = g^2: -lr g / (|g| + eps).
    return -lr * g / (np.abs(g) + EPS)


def adam_second(lr, g1, g2):
    m = B1 * (1 - B1) * g1 + (1 - B1) * g2
    v = B2 * (1 - B2) * g1**2 + (1 - B2) * g2**2
    m_hat, v_hat = m / (1 - B1**2), v / (1 - B2**2)
    return -lr * m_hat / (np.sqrt(v_hat) + EPS)


def test_leaf_paths_are_dotted_keys_and_list_indices():
    params, _ = params_and_grads()
    assert leaf_paths(params) == ["coulomb.charge", "lj.epsilon", "lj.sigma", "mpnn.blocks.0.kernel"]


def test_paper_argon_rates_give_the_hand_computed_adam_steps_for_the_real_lj_parameters():
    """configs/argon_train_quick.toml: sigma lr 2e-4 (clip 1e-3), epsilon lr 1e-2 (clip 0.05), on the
    parameter tree the LJ potential really builds; no clip is active in the first two steps."""
    from dmd_dist import potentials, systems

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "argon_train_quick.toml")
    s = systems.lattice_fluid(32, 94.4, jax.random.PRNGKey(0), "Ar", density=1.374)
    _, params = potentials.lennard_jones_potential(s, cutoff=0.5, skin=0.05, neighbor_mode="dense",
                                                   sigma=0.338, epsilon=0.8938)
    assert sorted(leaf_paths(params)) == ["lj.epsilon", "lj.sigma"]
    opt = make_optimizer(cfg.optimizer, params)
    g1 = {"lj": {"sigma": jnp.array([0.37]), "epsilon": jnp.array([-2.2])}}
    g2 = {"lj": {"sigma": jnp.array([-0.05]), "epsilon": jnp.array([-1.1])}}
    state = opt.init(params)
    u1, state = jax.jit(opt.update)(g1, state, params)
    u2, _ = jax.jit(opt.update)(g2, state, params)
    lr = {"lj.sigma": 2e-4, "lj.epsilon": 1e-2}
    for path, g in flat(g1).items():
        np.testing.assert_allclose(flat(u1)[path], adam_first(lr[path], g), rtol=1e-12)
        np.testing.assert_allclose(flat(u2)[path], adam_second(lr[path], g, flat(g2)[path]), rtol=1e-12)
    # The numbers themselves: a step of -lr sign(g) first (up to eps / |g| ~ 1e-8); then for sigma, whose
    # gradient turned, m_hat = (0.09 * 0.37 - 0.1 * 0.05) / 0.19 = 0.14895, v_hat = (0.999e-3 * 0.37^2 +
    # 1e-3 * 0.05^2) / 1.999e-3 = 0.069664, so -2e-4 * 0.14895 / 0.26394 = -1.1286e-4.
    np.testing.assert_allclose(flat(u1)["lj.sigma"], -2e-4, rtol=1e-7)
    np.testing.assert_allclose(flat(u1)["lj.epsilon"], 1e-2, rtol=1e-7)
    np.testing.assert_allclose(flat(u2)["lj.sigma"], -1.1286e-4, rtol=1e-4)


def test_per_group_learning_rates_from_a_toml_table_with_longest_prefix_and_default(tmp_path):
    path = tmp_path / "opt.toml"
    path.write_text(textwrap.dedent("""
        [system]
        kind = "lj_fluid"
        n_atoms = 10
        box = 2.0
        [potential]
        sigma = 0.34
        epsilon = 1.0
        [sampling]
        temperature = 94.4
        [optimizer]
        name = "sgd"
        learning_rate = {"lj" = 1e-3, "lj.sigma" = 2e-4, "mpnn.blocks" = 0.5, "default" = 5e-2}
    """))
    ocfg = load_config(path).optimizer
    params, grads = params_and_grads()
    opt = make_optimizer(ocfg, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    # SGD: -lr g exactly, lr by the longest matching key: lj.sigma beats lj, lj covers lj.epsilon,
    # mpnn.blocks covers mpnn.blocks.0.kernel, default takes the rest.
    lr = {"lj.sigma": 2e-4, "lj.epsilon": 1e-3, "mpnn.blocks.0.kernel": 0.5, "coulomb.charge": 5e-2}
    got, g = flat(updates), flat(grads)
    assert got.keys() == lr.keys()
    for p in lr:
        np.testing.assert_allclose(got[p], -lr[p] * g[p], rtol=1e-15)


def test_a_scalar_rate_and_a_scalar_clip_apply_to_every_parameter():
    params, grads = params_and_grads()
    opt = make_optimizer(optimizer_config(name="adam", learning_rate=3e-3), params)
    updates, _ = opt.update(grads, opt.init(params), params)
    for p, g in flat(grads).items():
        np.testing.assert_allclose(flat(updates)[p], adam_first(3e-3, g), rtol=1e-12)
    # A scalar clip below the rate caps every element at the clip: Adam's first step is +-lr.
    opt = make_optimizer(optimizer_config(name="adam", learning_rate=3e-3, clip=1e-3), params)
    updates, _ = opt.update(grads, opt.init(params), params)
    for p, g in flat(grads).items():
        np.testing.assert_allclose(flat(updates)[p], -1e-3 * np.sign(g), rtol=1e-15)


def test_per_group_clips_cap_each_update_element_and_leave_other_groups_alone():
    """SGD, so that the update is -lr g before the clip.  The clip caps the *update* (lr applied first),
    element by element: not the gradient, and not a global norm."""
    params, grads = params_and_grads()
    ocfg = optimizer_config(name="sgd", learning_rate={"lj": 1.0, "default": 0.1},
                            clip={"lj.sigma": 1e-3, "lj.epsilon": 0.05, "default": 0.01})
    updates, _ = make_optimizer(ocfg, params).update(grads, make_optimizer(ocfg, params).init(params), params)
    got = flat(updates)
    np.testing.assert_allclose(got["lj.sigma"], [-1e-3], rtol=1e-15)  # -3.0 capped at the clip
    np.testing.assert_allclose(got["lj.epsilon"], [0.02], rtol=1e-15)  # below its clip: untouched
    # charge: -0.25 capped at -0.01, +4e-5 untouched (a gradient clip would give -0.001; a global-norm
    # clip would have scaled the small element too).
    np.testing.assert_allclose(got["coulomb.charge"], [-0.01, 4e-5], rtol=1e-15)
    np.testing.assert_allclose(got["mpnn.blocks.0.kernel"], [[-1e-4, 0.01], [-0.01, 0.01]], rtol=1e-15)
    # Adam with a clip per group: the clipped group moves by its clip, the other by its rate.
    ocfg = optimizer_config(name="adam", learning_rate={"lj.sigma": 0.5, "default": 1e-3},
                            clip={"lj.sigma": 0.05, "default": 1.0})
    opt = make_optimizer(ocfg, params)
    got = flat(opt.update(grads, opt.init(params), params)[0])
    np.testing.assert_allclose(got["lj.sigma"], [-0.05], rtol=1e-15)
    for p, g in flat(grads).items():
        if p != "lj.sigma":
            np.testing.assert_allclose(got[p], adam_first(1e-3, g), rtol=1e-12)


def test_without_a_clip_table_nothing_is_clipped():
    params, grads = params_and_grads()
    opt = make_optimizer(optimizer_config(name="sgd", learning_rate=10.0), params)
    got = flat(opt.update(grads, opt.init(params), params)[0])
    np.testing.assert_allclose(got["mpnn.blocks.0.kernel"], -10.0 * flat(grads)["mpnn.blocks.0.kernel"], rtol=1e-15)
    assert got["mpnn.blocks.0.kernel"].max() == pytest.approx(70.0)


def test_non_finite_gradients_are_skipped_without_touching_the_adam_state():
    params, grads = params_and_grads()
    opt = make_optimizer(optimizer_config(name="adam", learning_rate={"lj": 1e-2, "default": 1e-3}), params)
    state = opt.init(params)
    bad = jax.tree.map(lambda g: g, grads)
    bad["lj"]["epsilon"] = jnp.array([jnp.nan])
    step = jax.jit(opt.update)
    for _ in range(3):  # a NaN anywhere zeroes the whole update, every group
        updates, state = step(bad, state, params)
        assert all(np.all(a == 0) for a in jax.tree.leaves(updates))
    # The moments and the step count were not advanced: the next finite step is Adam's first.
    updates, _ = step(grads, state, params)
    for p, g in flat(grads).items():
        np.testing.assert_allclose(flat(updates)[p], adam_first(1e-2 if p.startswith("lj.") else 1e-3, g),
                                   rtol=1e-12)


def test_the_state_does_not_depend_on_the_learning_rates_or_clips_values():
    """A resume may change the rates: the state of one config drives the optimizer of another."""
    params, grads = params_and_grads()
    a = make_optimizer(optimizer_config(learning_rate=1e-3, clip=0.5), params)
    b = make_optimizer(optimizer_config(learning_rate={"lj.sigma": 2e-4, "default": 1e-2}, clip=1e-3), params)
    sa, sb = a.init(params), b.init(params)
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    _, sa = a.update(grads, sa, params)
    updates, _ = b.update(grads, sa, params)  # b's second step from a's state after one step
    for p, g in flat(grads).items():
        want = adam_second(2e-4 if p == "lj.sigma" else 1e-2, g, g)  # = -lr sign(g) up to eps
        np.testing.assert_allclose(flat(updates)[p], np.clip(want, -1e-3, 1e-3), rtol=1e-12)


@pytest.mark.parametrize("table, key", [
    ({"learning_rate": {"lj.sgima": 1e-3, "default": 1e-3}}, "optimizer.learning_rate.lj.sgima"),
    ({"learning_rate": {"lj.sig": 1e-3, "default": 1e-3}}, "optimizer.learning_rate.lj.sig"),  # not a path prefix
    ({"learning_rate": {"l": 1e-3, "default": 1e-3}}, "optimizer.learning_rate.l"),
    ({"learning_rate": {"mpnn.blocks.1": 1e-3, "default": 1e-3}}, "optimizer.learning_rate.mpnn.blocks.1"),
    ({"clip": {"coulomb.q": 0.1, "default": 0.1}}, "optimizer.clip.coulomb.q"),
    ({"learning_rate": {"lj.sigma.x": 1e-3, "default": 1e-3}}, "optimizer.learning_rate.lj.sigma.x"),
])
def test_table_keys_that_name_no_parameter_are_refused(table, key):
    params, _ = params_and_grads()
    ocfg = optimizer_config(**table)
    for call in (lambda: check_tables(ocfg, params), lambda: make_optimizer(ocfg, params)):
        with pytest.raises(InputError) as e:
            call()
        assert e.value.key == key
        assert "no such parameter" in e.value.problem and "'lj.sigma'" in e.value.problem


@pytest.mark.parametrize("field", ["learning_rate", "clip"])
def test_a_table_without_an_entry_for_some_parameter_is_refused(field):
    params, _ = params_and_grads()
    section = {"learning_rate": 1e-3, field: {"lj": 1e-3, "coulomb": 1e-3, "mpnn": 1e-3}}
    make_optimizer(optimizer_config(**section), params)  # every parameter covered: fine
    section[field] = {"lj": 1e-3, "coulomb": 1e-3}
    with pytest.raises(InputError) as e:
        make_optimizer(optimizer_config(**section), params)
    assert e.value.key == f"optimizer.{field}"
    assert "'mpnn.blocks.0.kernel'" in e.value.problem and "default" in e.value.problem


def test_bad_optimizer_values_are_input_errors():
    for section, key, words in [({"name": "rmsprop"}, "optimizer.name", "adam"),
                                ({"schedule": "cosine"}, "optimizer.schedule", "unknown key")]:
        with pytest.raises(InputError) as e:
            optimizer_config(**section)
        assert e.value.key == key and words in e.value.problem
    for section, words in (({"learning_rate": -1.0}, "greater than or equal to 0"), ({"clip": 0.0}, "greater than 0")):
        with pytest.raises(InputError) as e:
            optimizer_config(**section)
        assert e.value.key.startswith("optimizer.") and words in e.value.problem
    assert OptimizerConfig() == optimizer_config()  # defaults: adam, 1e-3, no clip


def test_a_negative_rate_in_a_table_names_its_entry():
    with pytest.raises(InputError) as e:
        optimizer_config(learning_rate={"lj.sigma": -1e-3, "default": 1e-3})
    assert e.value.key == "optimizer.learning_rate.lj.sigma" and "greater than or equal to 0" in e.value.problem


def test_a_zero_learning_rate_freezes_its_group_exactly():
    params, grads = params_and_grads()
    opt = make_optimizer(optimizer_config(learning_rate={"lj.sigma": 1e-3, "default": 0.0}), params)
    state = opt.init(params)
    for _ in range(3):
        updates, state = jax.jit(opt.update)(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    moved = {k for k, v in flat(params).items() if np.any(v != flat(params_and_grads()[0])[k])}
    assert moved == {"lj.sigma"}


def test_learning_rates_halve_every_half_life_and_the_state_is_the_same_without_decay():
    """SGD with a constant gradient: update k is -lr 0.5^(k/h) g for every group (k = 0, 1, 2 with h = 2:
    factors 1, 1/sqrt 2, 1/2).  The optimizer state has one structure with and without a half-life, so a
    run may resume with decay switched on."""
    params, grads = params_and_grads()
    ocfg = optimizer_config(name="sgd", learning_rate={"lj": 1.0, "default": 0.1}, learning_rate_half_life=2)
    opt = make_optimizer(ocfg, params)
    state, lr = opt.init(params), {"lj.sigma": 1.0, "lj.epsilon": 1.0, "coulomb.charge": 0.1,
                                   "mpnn.blocks.0.kernel": 0.1}
    for factor in (1.0, 2**-0.5, 0.5):
        updates, state = jax.jit(opt.update)(grads, state, params)
        for p, g in flat(grads).items():
            np.testing.assert_allclose(flat(updates)[p], -lr[p] * factor * g, rtol=1e-14)
    constant = make_optimizer(optimizer_config(name="adam", learning_rate=1e-3), params)
    decaying = make_optimizer(optimizer_config(name="adam", learning_rate=1e-3, learning_rate_half_life=5.0), params)
    assert jax.tree.structure(constant.init(params)) == jax.tree.structure(decaying.init(params))
    with pytest.raises(Exception, match="learning_rate_half_life"):
        optimizer_config(learning_rate_half_life=0)
