"""The configuration schema (pydantic), TOML loading and `--set dotted.key=value` overrides.

Units: nm, ps, K, kJ/mol, amu, e; time steps in ps.  Unknown keys are errors.  Every problem becomes an
`InputError` naming the dotted key, which the CLI prints as one line with exit code 2.
"""

import copy
import tomllib
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator,
                      model_validator)

from dmd_dist.errors import InputError

PerSpecies = float | dict[str, float]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SystemConfig(Section):
    kind: Literal["lj_fluid", "water_box", "file"] = "lj_fluid"
    n_atoms: PositiveInt | None = Field(None, description="lj_fluid: number of atoms")
    n_molecules: PositiveInt | None = Field(None, description="water_box: number of molecules")
    element: str = Field("Ar", description="lj_fluid: chemical element (sets the mass)")
    box: PositiveFloat | None = Field(None, description="cubic box edge, nm (or give density)")
    density: PositiveFloat | None = Field(None, description="mass density, g/cm^3 (or give box)")
    path: str | None = Field(None, description="file: any structure file ASE reads (orthorhombic cell)")
    equilibration_steps: int = Field(5000, ge=0, description="NVT steps to prepare the start configuration")
    melt: bool = Field(True, description="melt at twice the temperature first (lattice starts)")
    friction: PositiveFloat = Field(5.0, description="Langevin gamma during preparation, 1/ps")
    prepare_with: Literal["potential", "teacher"] = Field(
        "potential", description="the potential that prepares the start configuration: the run's own, or the "
        "[pretrain] teacher (an ML potential far from its training data, as a lattice start is, can fall apart)")

    @model_validator(mode="after")
    def _check(self):
        need = {"lj_fluid": "n_atoms", "water_box": "n_molecules", "file": "path"}[self.kind]
        if getattr(self, need) is None:
            raise ValueError(f"system.kind = {self.kind!r} needs system.{need}")
        if self.kind != "file" and (self.box is None) == (self.density is None):
            raise ValueError(f"system.kind = {self.kind!r} needs exactly one of system.box, system.density")
        return self


# Keys that change the physics of only some potential kinds: set for another kind they would be ignored
# silently, so they are refused (the mpnn's envelope is smooth by construction: it takes no switch).
KIND_KEYS = {"shift": ("lennard_jones", "morse"), "switch_onset": ("lennard_jones", "morse", "spc_fw")}


class PotentialConfig(Section):
    kind: Literal["lennard_jones", "morse", "spc_fw", "mpnn"] = "lennard_jones"
    cutoff: PositiveFloat = Field(1.0, description="pair cutoff, nm")
    skin: float = Field(0.1, ge=0, description="neighbour-list skin, nm")
    neighbor_list: Literal["auto", "list", "dense"] = "auto"
    capacity_factor: float = Field(1.25, ge=1.0, description="neighbour-list slots per neighbour found")
    # None, not False, when unset: a resolved config (config.toml of a run) must load again for every kind.
    shift: bool | None = Field(None, description="lennard_jones, morse: shift pair energies to zero at the "
                               "cutoff (default false)")
    switch_onset: PositiveFloat | None = Field(None, description="C2 switch from here to the cutoff, nm")
    sigma: PerSpecies | None = Field(None, description="lennard_jones: nm")
    epsilon: PerSpecies | None = Field(None, description="lennard_jones: kJ/mol")
    depth: PerSpecies | None = Field(None, description="morse: well depth D, kJ/mol")
    alpha: PerSpecies | None = Field(None, description="morse: 1/nm")
    r0: PerSpecies | None = Field(None, description="morse: nm")
    coulomb_alpha: PositiveFloat = Field(2.0, description="spc_fw: damped-shifted-force damping, 1/nm")
    preset: Literal["tiny", "small", "paper"] = Field("tiny", description="mpnn: architecture preset")
    init_seed: int = Field(0, description="mpnn: parameter initialisation seed")
    checkpoint: str | None = Field(None, description="start from saved parameters: a `dmd-dist pretrain` or "
                                   "`dmd-dist train` run directory (or its checkpoints/) of a model of this kind "
                                   "(an MPNN also brings its architecture); relative to the config")
    parameters: dict[str, float] | None = Field(None, description="classical kinds: set named parameters, "
                                                "{\"bond.k\" = 4.2e5, \"lj.sigma[O]\" = 0.317}, after "
                                                "`checkpoint` (names as in metrics.jsonl)")

    @model_validator(mode="after")
    def _check(self):
        need = {"lennard_jones": ("sigma", "epsilon"), "morse": ("depth", "alpha", "r0"), "spc_fw": (),
                "mpnn": ()}[self.kind]
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"potential.kind = {self.kind!r} needs potential.{name}")
        # A key of another kind would be silently ignored: refuse it instead.
        foreign = sorted(k for k in self.model_fields_set & KIND_KEYS.keys() if self.kind not in KIND_KEYS[k])
        if foreign:
            raise ValueError(f"potential.{foreign[0]} does not apply to potential.kind = {self.kind!r} "
                             f"(it is for {', '.join(KIND_KEYS[foreign[0]])})")
        if self.parameters is not None and self.kind == "mpnn":
            raise ValueError("potential.parameters does not apply to potential.kind = 'mpnn' (it sets classical "
                             "parameters by name; an MPNN starts from `checkpoint` or `init_seed`)")
        return self


class DipoleConfig(Section):
    """The dipole model behind IR spectra (the record channel "dipole"), for any potential."""

    model: Literal["coulomb", "charges", "learned"] = Field(
        "coulomb", description="coulomb: the potential's own charges (spc_fw; a potential without them has no "
        "dipole); charges: fixed per-species `charges`, for any potential (an MPNN, say); learned: the "
        "network of potentials/dipole.py, its parameters under `dipole` beside the potential's, from "
        "`checkpoint` or `init_seed`")
    charges: PerSpecies | None = Field(None, description="charges: e per species; learned: the reference "
                                       "charges the network corrects (default 0)")
    checkpoint: str | None = Field(None, description="learned: a `dmd-dist pretrain` (target = \"dipole\") or "
                                   "`dmd-dist train` run whose model has a learned dipole; relative to the config")
    preset: Literal["tiny", "small", "paper"] = Field("tiny", description="learned: architecture preset")
    cutoff: PositiveFloat | None = Field(None, description="learned: nm, at most potential.cutoff (the default)")
    atomic_dipoles: bool = Field(True, description="learned: atomic dipoles besides the charges")
    init_seed: int = Field(0, description="learned: parameter initialisation seed")

    @model_validator(mode="after")
    def _check(self):
        if self.model == "charges" and self.charges is None:
            raise ValueError("dipole.model = 'charges' needs dipole.charges (e per species)")
        # Non-default values, not keys set: a run's resolved config.toml writes every default out.
        learned_only = [k for k in ("checkpoint", "cutoff", "atomic_dipoles", "preset", "init_seed")
                        if getattr(self, k) != type(self).model_fields[k].default]
        if self.model != "learned" and learned_only:
            raise ValueError(f"dipole.{learned_only[0]} applies to dipole.model = 'learned' only")
        if self.model == "coulomb" and self.charges is not None:
            raise ValueError("dipole.charges does not apply to dipole.model = 'coulomb' (the potential's "
                             "charges); use dipole.model = 'charges'")
        return self


TEACHER_KINDS = {"lennard_jones": ("sigma", "epsilon"), "morse": ("depth", "alpha", "r0"), "spc_fw": ()}


class PretrainConfig(Section):
    """`dmd-dist pretrain`: energy and force matching of the MPNN ([potential]) to reference data, or dipole
    matching of the learned dipole model ([dipole])."""

    target: Literal["energy_forces", "dipole"] = Field(
        "energy_forces", description="energy_forces: the MPNN ([potential]) learns the reference energies and "
        "forces; dipole: the learned dipole model ([dipole], model = 'learned') learns the total dipoles of a "
        "teacher with charges")
    teacher: PotentialConfig | None = Field(None, description="classical reference potential sampled by NVT "
                                            "Langevin: a table with the [potential] keys, or just its kind")
    data: str | None = Field(None, description="reference data instead of a teacher: extxyz (or any ASE-readable "
                             "file) with energies (eV) and forces (eV/Angstrom); relative to the config")
    energy_key: str | None = Field(None, description="data: atoms.info key of the energy (default: the "
                                   "calculator's, `energy=` in extxyz)")
    forces_key: str | None = Field(None, description="data: atoms.arrays key of the forces (default: the "
                                   "calculator's, `forces` in extxyz)")
    temperatures: list[PositiveFloat] | None = Field(None, description="teacher: K, chains at each "
                                                     "(default [sampling.temperature])")
    chains: PositiveInt = Field(4, description="teacher: Langevin chains per temperature")
    frames: PositiveInt = Field(25, description="teacher: frames per chain, sampling.steps_between_frames apart")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="frames held out for validation")
    batch_size: PositiveInt = Field(8, description="frames per optimizer step")
    steps: PositiveInt = Field(2000, description="optimizer steps in total")
    learning_rate: PositiveFloat = Field(3e-3, description="Adam, initial")
    final_learning_rate: PositiveFloat | None = Field(None, description="cosine decay to this "
                                                      "(default learning_rate / 100)")
    core_repulsion: NonNegativeFloat = Field(0.0, description="kJ/mol: a fixed repulsive wall E = c (r_0/r - 1)^3 "
                                             "for each pair closer than the closest pair of its species in the data "
                                             "(r_0, saved with the model); c is its energy at r_0/2; 0: none; "
                                             "ignored by the dipole target (potentials/core.py)")
    energy_weight: NonNegativeFloat = Field(100.0, description="per (kJ/mol/atom)^2 (100: equal weights in eV/atom "
                                            "and eV/Angstrom, the usual choice of MLIP codes)")
    force_weight: NonNegativeFloat = Field(1.0, description="per (kJ/mol/nm)^2")
    eval_every: PositiveInt = Field(100, description="steps between metrics lines and checkpoints")
    keep: PositiveInt = Field(3, description="checkpoints kept")

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher(cls, value):
        if isinstance(value, str):
            value = {"kind": value}
        if isinstance(value, dict):
            kind = value.get("kind", "lennard_jones")
            if kind not in TEACHER_KINDS:
                raise ValueError(f"unknown teacher {kind!r} (a classical potential: {', '.join(TEACHER_KINDS)})")
            missing = [k for k in TEACHER_KINDS[kind] if value.get(k) is None]
            if missing:
                raise ValueError(f"a {kind} teacher needs " + ", ".join(f"pretrain.teacher.{k}" for k in missing))
        return value

    @field_validator("data")
    @classmethod
    def _data_or_teacher(cls, value, info):
        if value is not None and info.data.get("teacher") is not None:
            raise ValueError("give pretrain.teacher or pretrain.data, not both")
        return value

    @model_validator(mode="after")
    def _check(self):
        if (self.energy_key or self.forces_key) and self.data is None:
            raise ValueError("pretrain.energy_key and pretrain.forces_key apply to pretrain.data only")
        return self


class SamplingConfig(Section):
    """Langevin NVT chains that provide start frames (not differentiated)."""

    temperature: PositiveFloat = Field(description="K")
    friction: PositiveFloat = Field(1.0, description="Langevin gamma, 1/ps")
    dt: PositiveFloat = Field(0.001, description="ps")
    equilibration_steps: int = Field(1000, ge=0, description="per replica, before the first frame")
    steps_between_frames: PositiveInt = Field(1000, description="decorrelation steps between frames")
    frames: PositiveInt = Field(4, description="frames per replica (simulate)")


class SegmentsConfig(Section):
    """NVE segments started from the frames, recorded every `record_every` steps."""

    dt: PositiveFloat = Field(0.001, description="ps")
    steps: PositiveInt = 1000
    record_every: PositiveInt = 1
    integrator: Literal["leapfrog"] = Field("leapfrog", description="the NVE engine of every command; velocity "
                                            "Verlet traces the same positions and is not a separate option")
    bidirectional: bool = False
    adjoint: Literal["reverse_time", "checkpoint", "direct"] = "reverse_time"
    remove_com: bool = True
    wrap: Literal["none", "atoms", "molecules"] = "none"
    window: Literal["auto"] | None = Field(None, description='"auto": choose steps <= `steps` from the '
                                           "measured gradient growth")
    max_energy_error: PositiveFloat | None = Field(
        None, description="kJ/mol per atom: `train` also masks (and counts) a window whose total energy at an end "
                          "differs from its frame's by more than this, an NVE integration that blew up (normal "
                          "windows stray by 1e-4 to 1e-2; 1.0 is a safe choice), and restarts its chain; `simulate` "
                          "leaves such windows out of its observables and counts them (failed_windows); null "
                          "(default): only non-finite windows are masked in training")

    @model_validator(mode="after")
    def _check(self):
        if self.steps % self.record_every:
            raise ValueError(f"segments.steps ({self.steps}) must be a multiple of segments.record_every "
                             f"({self.record_every}); no steps are dropped silently")
        return self


class TargetConfig(Section):
    observable: Literal["diffusion", "diffusion_msd", "viscosity", "vacf", "vdos", "ir", "density", "rdf"]
    value: float | None = Field(None, description="scalar target, in the observable's unit in observables.json")
    file: str | None = Field(None, description="curve target: two-column text file (relative to the config)")
    weight: PositiveFloat = 1.0
    scale: PositiveFloat | None = Field(None, description="scalar: error scale (default |value|)")
    regions: list[tuple[float, float, NonNegativeFloat]] | None = Field(
        None, description="curve: [[lo, hi, weight], ...] in the curve's x unit (default: the whole file)")
    reweight: bool = Field(True, description="include the ensemble (reweighting) term in the gradient")

    @model_validator(mode="after")
    def _check(self):
        from dmd_dist.losses import SCALAR_OBSERVABLES

        if self.observable in SCALAR_OBSERVABLES:
            if self.value is None or self.file is not None or self.regions is not None:
                raise ValueError(f"{self.observable} is a scalar target: give `value` (no `file` or `regions`)")
            if self.scale is None and self.value == 0:
                raise ValueError("a zero target value needs an explicit `scale`")
        else:
            if self.file is None or self.value is not None or self.scale is not None:
                raise ValueError(f"{self.observable} is a curve target: give `file` (no `value` or `scale`)")
            for lo, hi, _ in self.regions or ():
                if not lo < hi:
                    raise ValueError(f"region [{lo}, {hi}] must have lo < hi")
        return self


class OptimizerConfig(Section):
    name: Literal["adam", "sgd"] = "adam"
    # 0 freezes a group (its optimizer state stays, so a later resume may unfreeze it)
    learning_rate: NonNegativeFloat | dict[str, NonNegativeFloat] = 1e-3
    clip: PositiveFloat | dict[str, PositiveFloat] | None = None
    learning_rate_half_life: PositiveFloat | None = Field(
        None, description="iterations: every learning rate halves every this many updates (default: constant)")


class ReplicasConfig(Section):
    count: PositiveInt = 1
    gradient_batching: Literal["auto", "vmap", "map"] = Field(
        "auto", description="how a device runs its windows under the gradient (train): 'vmap' as one vectorised "
                            "program, 'map' one after another; 'auto': map in float64 on CPUs (faster there), else vmap. "
                            "Results agree to rounding, not bit for bit")


class TrainConfig(Section):
    iterations: PositiveInt = 10
    checkpoint_every: PositiveInt = 1
    keep: PositiveInt = 3
    max_failed_iterations: PositiveInt = Field(
        3, description="the run stops (exit code 4) after this many iterations in a row without a finite "
                       "loss and gradient; their updates are skipped")


class DistributedConfig(Section):
    mode: Literal["auto", "local", "slurm", "mpi"] = "auto"
    coordinator: str | None = None
    num_processes: PositiveInt | None = None
    process_id: int | None = Field(None, ge=0)
    port: int | None = Field(None, ge=1, le=65535)
    setup_timeout: PositiveFloat = Field(1800.0, description="seconds the processes wait for the slowest one "
                                         "to finish set-up (system preparation, compilation) before training")
    heartbeat_timeout: int = Field(30, ge=5, le=3600, description="seconds without a heartbeat (sent by a "
                                   "background thread, also while compiling) after which jax.distributed declares a "
                                   "process lost and ends the others; a process exits at most about this long after a "
                                   "peer died")
    bind: Literal["host", "all"] = Field("host", description="where process 0's coordination service listens: 'host', "
                                         "the coordinator host name's own address(es) (every interface when that "
                                         "name is a loopback address and processes may run on other nodes); 'all', "
                                         "every interface (jax's default)")


class ObservablesConfig(Section):
    viscosity: bool = Field(False, description="Green-Kubo shear viscosity and pressure: records the pressure "
                            "tensor in NVE segments (one more gradient per record); on when a target needs it")
    rdf: bool = Field(True, description="radial distribution function of the start frames (all atoms, and "
                      "every species pair when there are several species)")
    rdf_bins: PositiveInt = Field(100, description="rdf: number of bins")
    rdf_r_max: PositiveFloat | None = Field(None, description="rdf: nm, at most half the shortest box edge "
                                            "(the default)")


class OutputConfig(Section):
    trajectory: bool = Field(True, description="write trajectory.extxyz (replica 0's frames)")
    progress: bool = Field(True, description="progress bar on stderr")
    compilation_cache: str = Field("auto", description="where compiled XLA programs are kept for the next run "
                                   "(a resume, a requeued job, the same config again): 'auto' (GPU/TPU: as 'user'; "
                                   "CPU: off), 'user' ($XDG_CACHE_HOME or ~/.cache, then dmd-dist/xla), a directory, "
                                   "or 'off'; the environment's JAX_COMPILATION_CACHE_DIR wins")


class Config(Section):
    seed: int = 0
    precision: Literal["float64", "float32"] = "float64"
    system: SystemConfig
    potential: PotentialConfig
    sampling: SamplingConfig
    segments: SegmentsConfig = SegmentsConfig()
    targets: list[TargetConfig] = []
    optimizer: OptimizerConfig = OptimizerConfig()
    replicas: ReplicasConfig = ReplicasConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    observables: ObservablesConfig = ObservablesConfig()
    output: OutputConfig = OutputConfig()
    dipole: DipoleConfig = DipoleConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @model_validator(mode="after")
    def _preparer(self):
        if self.system.prepare_with == "teacher" and self.pretrain.teacher is None:
            raise ValueError("system.prepare_with = 'teacher' needs a [pretrain] teacher")
        return self

    @model_validator(mode="before")
    @classmethod
    def _teacher_inherits_neighbors(cls, data):
        """A pre-training teacher not given its own cutoff, skin, neighbor_list or capacity_factor takes the
        [potential] section's, written out so that the resolved config says what ran."""
        if not isinstance(data, dict) or not isinstance(data.get("pretrain"), dict):
            return data
        teacher = data["pretrain"].get("teacher")
        teacher = {"kind": teacher} if isinstance(teacher, str) else teacher
        potential = data.get("potential")
        if isinstance(teacher, dict) and isinstance(potential, dict):
            inherited = {k: potential[k] for k in INHERITED_BY_TEACHER if k in potential and k not in teacher}
            if inherited:
                data = {**data, "pretrain": {**data["pretrain"], "teacher": {**teacher, **inherited}}}
        return data


INHERITED_BY_TEACHER = ("cutoff", "skin", "neighbor_list", "capacity_factor")


def parse_override(text: str):
    """`dotted.key=value` -> (["dotted", "key"], value); the value is read as TOML, else as a string."""
    if "=" not in text:
        raise InputError("--set", f"expected dotted.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise InputError("--set", f"bad key {key!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict, overrides) -> dict:
    """`--set` values into the TOML data; an integer part indexes an array of tables (`targets.0.value`),
    and one past its end appends a table (`targets.1={observable = "rdf", file = "g.txt"}`)."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if last and part.isdigit() and int(part) == len(node):
                    node.append(None)
                if not part.isdigit() or int(part) >= len(node):
                    raise InputError(".".join(path), f"{'.'.join(path[:i])} has entries 0..{len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise InputError(".".join(path), f"{'.'.join(path[:i])} is not a section")
            elif not last:
                node.setdefault(part, {})
            if last:
                node[part] = value
            else:
                node = node[part]
    return data


def validate(data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as e:
        errors = e.errors()
        # A union (a number or a table) reports every branch: the one that fits the input's type says what
        # is wrong, and the branch names ("constrained-float", "dict[str,...]") are not keys.
        err = next((x for x in errors if not x["type"].endswith("_type")), errors[0])
        loc = ".".join(str(p) for p in err["loc"] if not _union_branch(p)) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg} (got {err['input']!r})"
        raise InputError(loc, msg) from None


def _union_branch(part):
    return isinstance(part, str) and ("[" in part or part.startswith("constrained-"))


def load_config(path, overrides=()) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("CONFIG", f"no such file: {path}") from None
    except IsADirectoryError:
        raise InputError("CONFIG", f"{path} is a directory, not a TOML file") from None
    except UnicodeDecodeError as e:
        raise InputError("CONFIG", f"{path} is not a text (UTF-8) file: {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise InputError("CONFIG", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(str(path), f"TOML syntax error: {e}") from None
    cfg = validate(apply_overrides(data, overrides))
    if cfg.system.kind == "file":
        p = Path(cfg.system.path)
        if not p.is_absolute():
            p = (path.parent / p).resolve()
        if not p.is_file():
            raise InputError("system.path", f"no such file: {p}")
        cfg = cfg.model_copy(update={"system": cfg.system.model_copy(update={"path": str(p)})})
    targets = []
    for i, t in enumerate(cfg.targets):  # curve files, like structure files, are relative to the config
        if t.file is not None:
            p = Path(t.file) if Path(t.file).is_absolute() else (path.parent / t.file).resolve()
            if not p.is_file():
                raise InputError(f"targets.{i}.file", f"no such file: {p}")
            t = t.model_copy(update={"file": str(p)})
        targets.append(t)
    cfg = cfg.model_copy(update={"targets": targets})
    # Pre-training inputs, like the files above, are relative to the config.
    if cfg.pretrain.data is not None:
        p = _relative_to(path, cfg.pretrain.data)
        if not p.is_file():
            raise InputError("pretrain.data", f"no such file: {p}")
        cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"data": str(p)})})
    for name in ("potential", "dipole"):  # saved models, like files, are relative to the config
        section = getattr(cfg, name)
        if section.checkpoint is not None:
            p = _relative_to(path, section.checkpoint)
            if not p.is_dir():
                raise InputError(f"{name}.checkpoint", f"no such directory: {p}")
            cfg = cfg.model_copy(update={name: section.model_copy(update={"checkpoint": str(p)})})
    return cfg


def _relative_to(config_path, name):
    p = Path(name).expanduser()
    return p if p.is_absolute() else (config_path.parent / p).resolve()


def dump_config(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
