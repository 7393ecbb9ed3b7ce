"""Losses: scalar and curve targets with known values, target files, config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist import losses
from dmd_dist.errors import InputError
from dmd_dist.config import load_config


def test_scalar_target_is_relative_squared_error_with_gradient():
    t = losses.ScalarTarget("diffusion", 0.00236, weight=2.0)
    assert float(t(0.00236)) == 0.0
    np.testing.assert_allclose(t(0.00236 * 1.1), 2.0 * 0.01, rtol=1e-12)
    np.testing.assert_allclose(jax.grad(t)(0.00281), 2.0 * 2 * (0.00281 - 0.00236) / 0.00236**2, rtol=1e-12)
    np.testing.assert_allclose(losses.ScalarTarget("density", 1.0, scale=1e-6)(1.0 + 1e-6), 1.0, rtol=1e-9)


def test_curve_target_integrates_weighted_squared_error_over_its_regions():
    grid = np.arange(0, 4001, 8.0)  # cm^-1
    x = np.linspace(0, 4000, 201)
    y = np.exp(-(((x - 1600) / 100) ** 2))
    t = losses.curve_target("ir", grid, x, y, regions=[(0, 1000, 10.0), (1000, 4000, 1.0)])
    target_on_grid = np.exp(-(((grid - 1600) / 100) ** 2))
    np.testing.assert_allclose(t.values, target_on_grid, atol=2e-4)  # cubic interpolation of a smooth curve
    assert float(t(jnp.asarray(t.values))) == 0.0
    # A constant offset c: loss = c^2 (10 * 1000 + 1 * 3000) up to the grid's end points.
    c = 0.01
    np.testing.assert_allclose(t(jnp.asarray(t.values) + c), c**2 * (10 * 1000 + 3000), rtol=0.01)
    g = jax.grad(lambda p: t(p))(jnp.asarray(t.values) + c)
    assert float(g[10]) == pytest.approx(10 * float(g[300]), rel=1e-12)  # region weights 10 : 1


def test_curve_target_ignores_grid_points_outside_the_data():
    grid = np.arange(0, 5000, 10.0)
    x = np.linspace(500, 3000, 50)
    t = losses.curve_target("ir", grid, x, np.ones_like(x))
    outside = (grid < 500) | (grid > 3000)
    assert np.all(t.mask_weights[outside] == 0) and np.all(t.values[outside] == 0)
    assert float(t(jnp.asarray(np.where(outside, 123.0, 1.0)))) == 0.0
    with pytest.raises(InputError, match="no grid point"):
        losses.curve_target("ir", grid, x, np.ones_like(x), regions=[(3500, 4000, 1.0)])


def test_target_set_sums_weighted_terms():
    s = losses.TargetSet((losses.ScalarTarget("diffusion", 1.0), losses.ScalarTarget("density", 2.0, weight=3.0)))
    total, terms = s({"diffusion": 1.5, "density": 1.0})
    assert terms == {"diffusion": 0.25, "density": 0.75} and total == 1.0
    with pytest.raises(KeyError):
        s({"diffusion": 1.0})


def test_read_curve_rejects_bad_files(tmp_path):
    good = tmp_path / "ok.txt"
    good.write_text("# w I\n" + "\n".join(f"{w} {w / 10}" for w in range(0, 100, 10)))
    x, y = losses.read_curve(good)
    assert x[-1] == 90 and y[-1] == 9
    for text, problem in [("1 2\n3 x\n", "numeric"), ("1 2 3\n4 5 6\n7 8 9\n1 2 3\n", "two columns"),
                          ("3 1\n2 1\n1 1\n0 1\n", "increase")]:
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(InputError, match=problem) as e:
            losses.read_curve(bad, "targets.0.file")
        assert e.value.key == "targets.0.file"
    with pytest.raises(InputError, match="no such file"):
        losses.read_curve(tmp_path / "missing.txt")


def _config(tmp_path, targets):
    from pathlib import Path

    base = (Path(__file__).parents[1] / "configs/tiny_water.toml").read_text()
    path = tmp_path / "sub" / "c.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(base + targets)
    return path


def test_config_targets_are_checked_and_files_resolved_relative_to_the_config(tmp_path):
    (tmp_path / "sub" / "data").mkdir(parents=True)
    (tmp_path / "sub" / "data" / "ir.txt").write_text("\n".join(f"{w} 1.0" for w in range(0, 4000, 100)))
    cfg = load_config(_config(tmp_path, '[[targets]]\nobservable = "ir"\nfile = "data/ir.txt"\n'
                                        'regions = [[0, 1000, 10], [1000, 4000, 1]]\n'
                                        '[[targets]]\nobservable = "diffusion"\nvalue = 0.0023\n'))
    assert cfg.targets[0].file == str((tmp_path / "sub" / "data" / "ir.txt").resolve())
    assert cfg.targets[0].reweight and cfg.targets[1].scale is None
    grid = np.arange(0, 4000, 8.0)
    total, terms = losses.build_targets(cfg.targets, {"ir": grid})({"ir": jnp.zeros(grid.size), "diffusion": 0.0023})
    np.testing.assert_allclose(terms["ir"], 10 * 1000 + 2992, rtol=0.01)  # I* = 1 up to 3900 cm^-1
    for text, key in [('[[targets]]\nobservable = "ir"\nfile = "nope.txt"\n', "targets.0.file"),
                      ('[[targets]]\nobservable = "diffusion"\nfile = "x.txt"\n', "targets.0"),
                      ('[[targets]]\nobservable = "ir"\nvalue = 1.0\n', "targets.0"),
                      ('[[targets]]\nobservable = "diffusion"\nvalue = 0.0\n', "targets.0"),
                      ('[[targets]]\nobservable = "ir"\nfile = "data/ir.txt"\nregions = [[5, 1, 1]]\n', "targets.0")]:
        with pytest.raises(InputError) as e:
            load_config(_config(tmp_path, text))
        assert e.value.key == key, (text, str(e.value))
