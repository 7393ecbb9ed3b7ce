import tomllib
from pathlib import Path

import jax
import pytest

from dmd_dist.errors import InputError
from dmd_dist.config import apply_overrides, dump_config, load_config, validate

BASE = {"system": {"kind": "lj_fluid", "n_atoms": 10, "box": 2.0},
        "potential": {"sigma": 0.34, "epsilon": 1.0}, "sampling": {"temperature": 94.4}}


@pytest.mark.parametrize("potential", [BASE["potential"], {"kind": "mpnn"}, {"kind": "spc_fw"}])
def test_defaults_and_round_trip(tmp_path, potential):
    """The resolved config a run writes (config.toml) loads again, for every kind of potential: `plot` and
    the workflows read it back."""
    cfg = validate(BASE | {"potential": potential})
    assert cfg.precision == "float64" and cfg.segments.adjoint == "reverse_time" and cfg.replicas.count == 1
    path = tmp_path / "c.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_overrides_are_typed_by_toml():
    data = apply_overrides(BASE, ["segments.steps=200", "potential.kind=morse", "potential.sigma={Ar=0.3}",
                                  "output.progress=false"])
    assert data["segments"]["steps"] == 200 and data["potential"]["kind"] == "morse"
    assert data["potential"]["sigma"] == {"Ar": 0.3} and data["output"]["progress"] is False


@pytest.mark.parametrize("override, key, words", [
    ("segments.dt=-0.001", "segments.dt", "greater than 0"),
    ("sampling.frames=0", "sampling.frames", "greater than 0"),
    ("system.colour=1", "system.colour", "unknown key"),
    ("potential.kind=eam", "potential.kind", "lennard_jones"),
    ("replicas.count=two", "replicas.count", "integer"),
    ("segments.record_every=3", "segments", "multiple"),
    ("precision=float16", "precision", "float64"),
    ("system.kind=file", "system", "path"),
])
def test_bad_values_name_the_key(override, key, words):
    with pytest.raises(InputError) as e:
        validate(apply_overrides(BASE, [override]))
    assert e.value.key == key and words in e.value.problem


@pytest.mark.parametrize("kind, key", [("mpnn", "switch_onset"), ("spc_fw", "shift"), ("mpnn", "shift")])
def test_a_key_the_potential_kind_would_ignore_is_refused(kind, key):
    with pytest.raises(InputError) as e:
        validate(apply_overrides(BASE, [f"potential.kind={kind}", f"potential.{key}=" + ("0.5" if key == "switch_onset" else "true")]))
    assert e.value.key == "potential" and f"potential.{key} does not apply to potential.kind = '{kind}'" in e.value.problem
    validate(apply_overrides(BASE, ["potential.switch_onset=0.5"]))  # LJ takes both
    validate(apply_overrides(BASE, ["potential.kind=spc_fw", "potential.switch_onset=0.5"]))


def test_named_parameters_are_for_classical_kinds_and_an_unknown_name_is_refused_by_name():
    from dmd_dist.assemble import build_potential, build_system, set_precision

    with pytest.raises(InputError, match="potential.parameters does not apply to potential.kind = 'mpnn'"):
        validate(apply_overrides(BASE, ["potential.kind=mpnn", 'potential.parameters={"lj.sigma" = 0.3}']))
    cfg = validate(apply_overrides(BASE, ['potential.parameters={"lj.sigmaa" = 0.3}']))
    set_precision(cfg.precision)
    with pytest.raises(InputError) as e:
        build_potential(cfg, build_system(cfg, jax.random.PRNGKey(0)))
    assert e.value.key == "potential.parameters.lj.sigmaa" and "'lj.sigma'" in e.value.problem


def test_overrides_index_arrays_of_tables():
    base = {**BASE, "targets": [{"observable": "diffusion", "value": 1.0}]}
    data = apply_overrides(base, ["targets.0.value=2.5", "targets.0.reweight=false"])
    assert data["targets"] == [{"observable": "diffusion", "value": 2.5, "reweight": False}]
    assert base["targets"][0]["value"] == 1.0  # the input is not modified
    appended = apply_overrides(base, ['targets.1={observable = "vacf", file = "v.txt"}'])["targets"]
    assert appended == base["targets"] + [{"observable": "vacf", "file": "v.txt"}]
    for bad, words in [("targets.1.value=2", "entries 0..0"), ("targets.x.value=2", "entries 0..0"),
                       ("targets.2={observable = \"vacf\"}", "entries 0..0"),
                       ("system.n_atoms.x=1", "system.n_atoms is not a section")]:
        with pytest.raises(InputError, match=words):
            apply_overrides(base, [bad])


def test_missing_section_and_bad_override_syntax():
    with pytest.raises(InputError, match="sampling: required key is missing"):
        validate({k: v for k, v in BASE.items() if k != "sampling"})
    with pytest.raises(InputError, match="--set"):
        apply_overrides(BASE, ["segments.steps"])


def test_relative_structure_path_resolves_next_to_the_config(tmp_path):
    (tmp_path / "s.xyz").write_text("1\n\nAr 0 0 0\n")
    (tmp_path / "c.toml").write_text('[system]\nkind = "file"\npath = "s.xyz"\n[potential]\nsigma = 0.3\n'
                                     'epsilon = 1.0\n[sampling]\ntemperature = 90.0\n')
    assert load_config(tmp_path / "c.toml").system.path == str(tmp_path / "s.xyz")


def test_every_config_key_is_documented():
    from pathlib import Path

    from dmd_dist.config import Config

    doc = (Path(__file__).resolve().parents[1] / "docs/configuration.md").read_text()
    missing = []
    for section, field in Config.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        if sub is None and hasattr(field.annotation, "__args__"):  # list[TargetConfig]
            sub = getattr(field.annotation.__args__[0], "model_fields", None)
        names = [section] if sub is None else list(sub)
        missing += [f"{section}.{n}" for n in names if f"`{n}`" not in doc and f"{section}.{n}`" not in doc]
    assert not missing, f"undocumented config keys: {missing}"


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Every config in configs/ validates, its files (targets, structures) exist, its resolved dump loads
    again, and its optimizer's per-parameter tables name parameters of its potential (as `train` checks
    them: configs/argon_diffusion.toml once said `sigma` for `lj.sigma` and could not train)."""
    from dmd_dist.assemble import build_potential, build_system, set_precision
    from dmd_dist.train.optimizer import check_tables

    cfg = load_config(path)
    validate(tomllib.loads(dump_config(cfg)))
    if isinstance(cfg.optimizer.learning_rate, dict) or isinstance(cfg.optimizer.clip, dict):
        set_precision(cfg.precision)
        check_tables(cfg.optimizer, build_potential(cfg, build_system(cfg, jax.random.PRNGKey(0)))[1])
