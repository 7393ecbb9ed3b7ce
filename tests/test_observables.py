"""Observables on synthetic signals with known answers."""

import jax.numpy as jnp
import numpy as np
import pytest

from dmd_dist.observables import spectra, tcf, transport


def test_fft_correlation_equals_the_all_origins_sum():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 3)), rng.standard_normal((50, 3))
    c = np.asarray(tcf.correlation(jnp.asarray(a), jnp.asarray(b), max_lag=20))
    brute = np.array([[np.mean(a[: 50 - k, j] * b[k:, j]) for j in range(3)] for k in range(20)])
    np.testing.assert_allclose(c, brute, atol=1e-12)


def ornstein_uhlenbeck(n_steps, n_atoms, dt, gamma, kt_over_m, seed=0):
    """Exact OU discretisation: v' = v e^{-gamma dt} + sqrt(kT/m (1 - e^{-2 gamma dt})) xi."""
    rng = np.random.default_rng(seed)
    c = np.exp(-gamma * dt)
    s = np.sqrt(kt_over_m * (1 - c * c))
    v = np.empty((n_steps, n_atoms, 3))
    v[0] = rng.standard_normal((n_atoms, 3)) * np.sqrt(kt_over_m)
    for t in range(1, n_steps):
        v[t] = c * v[t - 1] + s * rng.standard_normal((n_atoms, 3))
    return v


def test_green_kubo_of_ornstein_uhlenbeck_velocities_gives_kt_over_m_gamma():
    dt, gamma, kt_over_m = 0.01, 2.0, 0.5  # D = kT/(m gamma) = 0.25
    v = jnp.asarray(ornstein_uhlenbeck(20000, 64, dt, gamma, kt_over_m))
    c = transport.vacf(v, max_lag=500)  # 5 ps = 10 relaxation times
    np.testing.assert_allclose(c[0], 3 * kt_over_m, rtol=0.02)
    # Independent estimates from 8 blocks give the statistical error of D.
    blocks = [float(transport.green_kubo_diffusion(transport.vacf(b, max_lag=500), dt)) for b in jnp.split(v, 8)]
    d, err = np.mean(blocks), np.std(blocks, ddof=1) / np.sqrt(8)
    assert abs(d - 0.25) < 4 * err + 0.002, (d, err)


def test_ballistic_free_particles_have_msd_v2_t2_and_einstein_slope():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((30, 3))
    times = np.arange(100) * 0.1
    x = rng.standard_normal((30, 3)) + times[:, None, None] * v[None]
    msd = np.asarray(transport.mean_squared_displacement(jnp.asarray(x)))
    np.testing.assert_allclose(msd, np.mean(np.sum(v * v, -1)) * times**2, rtol=1e-9, atol=1e-9)


def test_einstein_diffusion_of_a_random_walk():
    rng = np.random.default_rng(2)
    dt, d_true = 0.01, 0.3
    steps = rng.standard_normal((4000, 200, 3)) * np.sqrt(2 * d_true * dt)
    x = jnp.asarray(np.cumsum(steps, axis=0))
    msd = transport.mean_squared_displacement(x, max_lag=400)
    d = transport.einstein_diffusion(msd, jnp.arange(400) * dt, fit_from=0.5)
    np.testing.assert_allclose(d, d_true, rtol=0.03)


def test_ir_of_a_damped_cosine_peaks_at_its_frequency_with_the_expected_area():
    dt, n_grid = 0.0005, 8000
    nu0 = 1650.0  # cm^-1
    omega0 = 2 * np.pi * spectra.SPEED_OF_LIGHT_CM_PER_PS * nu0  # rad/ps
    t = np.arange(4000) * dt
    acf = jnp.asarray(2.5 * np.cos(omega0 * t) * np.exp(-t / 0.5))
    grid = np.asarray(spectra.wavenumber_grid(dt, n_grid))
    spec = np.asarray(spectra.ir_spectrum(acf, dt, 300.0, 30.0, window_sigma=1e9, n_grid=n_grid))
    dnu = grid[1]
    assert abs(grid[np.argmax(spec[: n_grid // 2])] - nu0) <= dnu
    np.testing.assert_allclose(dnu, 8.339, rtol=1e-3)  # the paper's grid at dt = 0.5 fs
    # int_0^inf F(nu) dnu = C(0) / (2 c) for the two-sided transform F: the area is fixed by the zero-lag
    # value and the prefactor.
    area = np.sum(spec[: n_grid // 2]) * dnu
    expected = spectra.ir_prefactor(300.0, 30.0) * 2.5 / (2 * spectra.SPEED_OF_LIGHT_CM_PER_PS)
    np.testing.assert_allclose(area, expected, rtol=0.01)


def test_ir_pipeline_from_an_oscillating_dipole_stream():
    dt, nu0 = 0.0005, 3400.0
    omega0 = 2 * np.pi * spectra.SPEED_OF_LIGHT_CM_PER_PS * nu0
    t = np.arange(2000) * dt
    phases = np.array([0.3, 1.9, 4.0])
    m = jnp.asarray(0.02 * np.sin(omega0 * t[:, None] + phases[None]))
    acf = spectra.dipole_derivative_acf(m, dt)
    spec = np.asarray(spectra.ir_spectrum(acf, dt, 300.0, 30.0))
    grid = np.asarray(spectra.wavenumber_grid(dt, 8000))
    assert abs(grid[np.argmax(spec[:4000])] - nu0) <= grid[1]
    # Each axis 0.02 sin(w0 t + phi) has the forward difference 0.02 (2 sin(w0 dt/2) / dt) cos(w0 (t + dt/2)
    # + phi), whatever phi: summed over x, y, z the ACF over all origins is 3 B^2/2 cos(w0 tau) (up to
    # the estimator's residual, 6e-4 of C(0) for tau < 0.5 ps).
    b = 0.02 * 2 * np.sin(omega0 * dt / 2) / dt
    c0 = 3 * b**2 / 2
    tau = np.arange(acf.shape[0]) * dt
    assert acf.shape == (1999,)
    np.testing.assert_allclose(acf[0], c0, rtol=2e-3)
    np.testing.assert_allclose(acf[:1000], c0 * np.cos(omega0 * tau[:1000]), rtol=0, atol=3e-3 * c0)
    # The transform is linear: the stream's spectrum is the analytic ACF's (4.7e-4 of the peak apart).
    ref = np.asarray(spectra.ir_spectrum(jnp.asarray(c0 * np.cos(omega0 * tau)), dt, 300.0, 30.0))
    np.testing.assert_allclose(spec[:4000], ref[:4000], rtol=0, atol=3e-3 * ref.max())


def test_vibrational_dos_of_harmonic_oscillators():
    dt, nu0 = 0.001, 500.0
    omega0 = 2 * np.pi * spectra.SPEED_OF_LIGHT_CM_PER_PS * nu0
    t = np.arange(3000) * dt
    c = jnp.asarray(np.cos(omega0 * t))
    dos = np.asarray(spectra.vibrational_dos(c, dt, n_grid=8000, window_sigma=0.5))
    grid = np.asarray(spectra.wavenumber_grid(dt, 8000))
    assert abs(grid[np.argmax(dos[:4000])] - nu0) <= grid[1]
    np.testing.assert_allclose(np.sum(dos[:4000]) * grid[1], 1.0, rtol=1e-9)


def synthetic_pressure(n_steps, dt, gamma, s2, seed):
    """Five independent OU processes (variance s2, rate gamma) on an orthonormal basis of symmetric
    traceless tensors, plus an isotropic pressure 100 + 10 xi that must drop out of the shear ACF:
    (n_steps, 3, 3) with <P_xy(0) P_xy(t)> = s2/2 e^{-gamma t} and mean trace/3 = 100."""
    c = ornstein_uhlenbeck(n_steps, 2, dt, gamma, s2, seed=seed).reshape(n_steps, 6)
    r2, r6 = np.sqrt(2.0), np.sqrt(6.0)
    basis = np.zeros((5, 3, 3))
    for k, (a, b) in enumerate([(0, 1), (0, 2), (1, 2)]):
        basis[k, a, b] = basis[k, b, a] = 1 / r2
    basis[3] = np.diag([1, -1, 0]) / r2
    basis[4] = np.diag([1, 1, -2]) / r6
    np.testing.assert_allclose(np.einsum("kab,lab->kl", basis, basis), np.eye(5), atol=1e-15)
    isotropic = (100.0 + 10.0 * c[:, 5] / np.sqrt(s2))[:, None, None] * np.eye(3)
    return np.einsum("tk,kab->tab", c[:, :5], basis) + isotropic


def test_green_kubo_viscosity_of_a_synthetic_shear_stress_with_known_integral():
    """<P_xy P_xy(t)> = s2/2 e^{-gamma t}, so eta = V/(kT) s2/(2 gamma)."""
    from dmd_dist.units import BOLTZMANN

    dt, gamma, s2, volume, temperature = 0.01, 4.0, 3.0, 30.0, 300.0
    pressure = synthetic_pressure(40000, dt, gamma, s2, seed=3)
    acf = transport.shear_stress_acf(jnp.asarray(pressure), max_lag=300)
    np.testing.assert_allclose(acf[0], s2 / 2, rtol=0.03)
    expected = volume / (BOLTZMANN * temperature) * s2 / (2 * gamma)
    blocks = [float(transport.green_kubo_viscosity(transport.shear_stress_acf(b, 300), dt, volume, temperature))
              for b in jnp.split(jnp.asarray(pressure), 8)]
    eta, err = np.mean(blocks), np.std(blocks, ddof=1) / np.sqrt(8)
    assert abs(eta - expected) < 4 * err + 0.01 * expected, (eta, err, expected)


def test_simulate_reports_the_viscosity_and_pressure_of_its_windows_in_mpa_s_and_bar():
    """`simulate`'s reduction of the windows' pressure tensors (the one behind observables.json): 256
    windows of a synthetic stress, each integrated to its own end (1 ps = 4 relaxation times), give the
    window's Green-Kubo integral V/(kT) int_0^T s2/2 e^{-gamma t} dt in mPa s, and the isotropic mean in
    bar; the VACF of velocities relaxing at rate gamma gives D = (kT/m) (1 - e^{-gamma T}) / gamma."""
    from dmd_dist.simulate import dynamical_observables
    from dmd_dist.units import BOLTZMANN, KJ_PER_MOL_NM3_TO_BAR, KJ_PS_PER_MOL_NM3_TO_MPA_S

    dt, gamma, s2, volume, temperature, n_seg, n_rec = 0.01, 4.0, 3.0, 30.0, 300.0, 256, 101
    times = np.arange(n_rec) * dt
    pressure = synthetic_pressure(n_seg * n_rec, dt, gamma, s2, seed=0).reshape(n_seg, n_rec, 3, 3)
    vacf = np.broadcast_to(3 * 0.5 * np.exp(-gamma * times), (n_seg, n_rec))  # kT/m = 0.5 nm^2/ps^2
    obs = dynamical_observables({"vacf": vacf, "msd": np.zeros_like(vacf), "pressure": pressure}, times, False,
                                False, temperature, volume)
    trapezoid = (np.sum(np.exp(-gamma * times)) - 0.5 * (1 + np.exp(-gamma * times[-1]))) * dt
    eta = volume / (BOLTZMANN * temperature) * s2 / 2 * trapezoid * KJ_PS_PER_MOL_NM3_TO_MPA_S
    v = obs["viscosity"]
    assert v["unit"] == "mPa s" and abs(v["value"] - eta) < 3 * v["stderr"], (v, eta)
    assert v["stderr"] < 0.08 * eta, (v, eta)  # 256 windows resolve it to 5%: a 25% error would fail
    p = obs["pressure"]
    assert p["unit"] == "bar" and abs(p["value"] - 100 * KJ_PER_MOL_NM3_TO_BAR) < 3 * p["stderr"] + 1e-9, p
    assert obs["diffusion"]["value"] == pytest.approx(0.5 * trapezoid, rel=1e-12)


def test_pressure_tensor_of_an_ideal_gas_is_n_kt_over_v():
    from dmd_dist.units import BOLTZMANN

    rng = np.random.default_rng(0)
    n, kt, volume = 20000, BOLTZMANN * 300.0, 8.0
    masses = rng.uniform(1.0, 40.0, n)
    v = rng.standard_normal((n, 3)) * np.sqrt(kt / masses)[:, None]
    p = np.asarray(transport.pressure_tensor(np.zeros((3, 3)), jnp.asarray(v), jnp.asarray(masses), volume))
    np.testing.assert_allclose(np.diag(p), n * kt / volume, rtol=0.03)
    assert np.abs(p - np.diag(np.diag(p))).max() < 0.03 * n * kt / volume


def test_lennard_jones_viscosity_at_the_triple_point():
    """Green-Kubo shear viscosity of the LJ liquid at T* = 0.722, rho* = 0.8442 (cutoff 2.5 sigma, shifted):
    eta* = 3.24 +- 0.04 from 40 ns of N = 2048 (Ferrario, Ciccotti, Holian and Ryckaert, Phys. Rev. A 44,
    6936 (1991)); Meier, Laesecke and Kabelac (J. Chem. Phys. 121, 3671 (2004)) agree.  Here: 256 argon
    atoms, 800 ps of NVE in 10 blocks, the stress from `Potential.virial`; in argon units eta ~ 0.29 mPa s."""
    import jax

    from dmd_dist import integrators, potentials, systems
    from dmd_dist.driver import scan_steps
    from dmd_dist.units import BOLTZMANN, KJ_PS_PER_MOL_NM3_TO_MPA_S

    sigma, eps, mass = 0.3405, 0.996, 39.948
    temperature = 0.722 * eps / BOLTZMANN
    density = 0.8442 / sigma**3 * mass / 602.214076  # g/cm^3
    key = jax.random.PRNGKey(0)
    s = systems.lattice_fluid(256, temperature, key, "Ar", density=density)
    pot, params = potentials.lennard_jones_potential(s, sigma, eps, cutoff=2.5 * sigma, skin=0.1,
                                                     neighbor_mode="list", shift=True)
    s = systems.prepare(s, pot, params, temperature, key, 2000, 0.005, 1.0, melt_temperature=2 * temperature)
    dt, every, steps = 0.01, 4, 80000  # dt = 0.0046 tau; the stress every 40 fs
    vv = integrators.velocity_verlet(integrators.Dynamics(pot, s.masses), dt)
    start = vv.init(params, s.positions, s.velocities, pot.neighbors.allocate(s.positions))

    def record(st):
        return transport.pressure_tensor(pot.virial(params, st.position, st.neighbors), st.velocity, s.masses,
                                         s.volume)

    end, pressure = jax.jit(lambda st: scan_steps(vv.step, params, st, steps, record, every))(start)
    assert not bool(end.neighbors.overflow)
    lag = int(round(2.5 / (dt * every)))  # integrate to 2.5 ps (about 1.2 tau), where the integral levels off
    blocks = [float(transport.green_kubo_viscosity(transport.shear_stress_acf(b, lag), dt * every, s.volume,
                                                   temperature)) for b in jnp.split(pressure, 10)]
    reduced = np.sqrt(mass * eps) / sigma**2  # the LJ viscosity unit, in kJ ps/(mol nm^3)
    eta, err = np.mean(blocks) / reduced, np.std(blocks, ddof=1) / np.sqrt(10) / reduced
    assert abs(eta - 3.24) < 3 * err + 0.1 * 3.24, (eta, err)
    assert 0.2 < np.mean(blocks) * KJ_PS_PER_MOL_NM3_TO_MPA_S < 0.4


def test_self_diffusion_of_flexible_water():
    """SPC/Fw water at 298 K: D = 2.32e-9 m^2/s (Wu, Tepper and Voth, J. Chem. Phys. 124, 024503 (2006),
    Ewald electrostatics).  Here 64 molecules with damped-shifted-force Coulomb at 0.55 nm (the quick IR
    setup), 25 ps of weakly thermostatted dynamics (gamma 0.2/ps, far below the liquid's collision rate),
    Einstein D of the oxygens from all time origins in 5 blocks.  A 1.24 nm periodic box slows diffusion by
    2.837 kT / (6 pi eta L) (Yeh and Hummer, J. Phys. Chem. B 108, 15873 (2004)); with eta = 0.89 mPa s
    that is 0.56e-9 m^2/s, added back before comparing."""
    import jax

    from dmd_dist import integrators, potentials, systems
    from dmd_dist.driver import scan_steps
    from dmd_dist.units import BOLTZMANN, NM2_PER_PS_TO_1E9_M2_PER_S

    key = jax.random.PRNGKey(0)
    s = systems.water_lattice(64, 298.15, key, density=0.997)
    pot, params = potentials.spc_fw_potential(s, cutoff=0.55, skin=0.05, coulomb_alpha=3.0, neighbor_mode="list")
    s = systems.prepare(s, pot, params, 298.15, key, 8000, 0.0005, 5.0)
    nvt = integrators.langevin_baoab(integrators.Dynamics(pot, s.masses), 0.0005, 298.15, 0.2)
    start = nvt.init(params, s.positions, s.velocities, pot.neighbors.allocate(s.positions), key)
    oxygen = np.asarray(s.topology.species) == s.topology.species_names.index("O")

    def record(st):  # positions are never wrapped by this integrator: they are unwrapped trajectories
        return st.position[oxygen], integrators.kinetic_energy(st.velocity, s.masses)

    end, (x_o, kinetic) = jax.jit(lambda st: scan_steps(nvt.step, params, st, 60000, record, 20))(start)
    assert not bool(end.neighbors.overflow)
    temperature = 2 * float(jnp.mean(kinetic)) / (s.degrees_of_freedom * BOLTZMANN)
    assert abs(temperature - 298.15) < 10.0
    blocks = []
    for b in jnp.split(x_o[500:], 5):  # the first 5 ps settle the weak thermostat; 5 blocks of 5 ps
        msd = transport.mean_squared_displacement(b, b.shape[0] // 2)
        blocks.append(float(transport.einstein_diffusion(msd, jnp.arange(msd.shape[0]) * 0.01, 0.5)))
    d, err = np.mean(blocks) * NM2_PER_PS_TO_1E9_M2_PER_S, np.std(blocks, ddof=1) / np.sqrt(5) * 1e3
    box = float(s.box[0]) * 1e-9
    finite_size = 2.837297 * 1.380649e-23 * 298.15 / (6 * np.pi * 0.89e-3 * box) * 1e9  # in 1e-9 m^2/s
    assert abs(d + finite_size - 2.32) < 3 * err + 0.15 * 2.32, (d, err, finite_size)


def test_the_ir_target_loss_of_a_run_and_its_jackknife_standard_error(tmp_path):
    """`simulate`'s loss of the config's IR target: windows whose spectra are the target shifted by offsets
    o_i (mean mu, spread s) score weight * mu^2 * (sum of the region weights over the band) for their mean
    spectrum, and the jackknife standard error is the delta method's |d loss/d mu| s / sqrt(n)."""
    from types import SimpleNamespace

    from dmd_dist.simulate import _target_loss

    grid = np.linspace(0.0, 4000.0, 801)
    target = 1e-3 * np.exp(-(((grid - 3500.0) / 100.0) ** 2)) + 1e-4
    path = tmp_path / "target.txt"
    np.savetxt(path, np.column_stack([grid, target]))
    rng = np.random.default_rng(0)
    offsets = 2e-4 + 3e-5 * rng.standard_normal(64)
    entry = _target_loss(grid, target[None, :] + offsets[:, None],
                         SimpleNamespace(file=path, regions=[[0.0, 1000.0, 10.0], [1000.0, 4000.0, 1.0]], weight=2.0))
    band_weight = 10.0 * 1000.0 + 3000.0  # trapezoid weights: the regions' widths
    mu = offsets.mean()
    assert entry["value"] == pytest.approx(2.0 * band_weight * mu**2, rel=1e-3)
    delta = 2 * 2.0 * band_weight * mu * offsets.std(ddof=1) / np.sqrt(offsets.size)
    assert entry["stderr"] == pytest.approx(delta, rel=0.02)


def test_simulate_leaves_out_windows_that_broke_energy_conservation_when_max_energy_error_is_set():
    """`simulate.failed_windows` judges windows as `train` does: E = U + K at an end against the frame's (the
    middle record of a bidirectional window, the first of a forward one); a stray beyond the limit or a
    non-finite energy fails, nothing is judged without a limit, and a run whose every window failed stops."""
    from types import SimpleNamespace

    from dmd_dist.errors import Diverged
    from dmd_dist.simulate import failed_windows

    e = np.full((4, 5), -10.0)
    e[1, 0] += 2.0  # the backward end strays by 2 kJ/mol per atom
    e[2, 2] += 0.5  # the frame itself is the reference: both ends then stray by 0.5
    e[3, -1] = np.nan
    bidirectional = SimpleNamespace(max_energy_error=1.0, bidirectional=True)
    assert failed_windows(bidirectional, e).tolist() == [False, True, False, True]
    assert failed_windows(SimpleNamespace(max_energy_error=0.4, bidirectional=True), e).tolist() == [False, True, True, True]
    forward = SimpleNamespace(max_energy_error=1.0, bidirectional=False)
    assert failed_windows(forward, e).tolist() == [False, True, False, True]  # frame = first record
    assert failed_windows(SimpleNamespace(max_energy_error=None, bidirectional=True), e) is None
    with pytest.raises(Diverged, match="segments.max_energy_error: every one of the 4 windows"):
        failed_windows(SimpleNamespace(max_energy_error=1e-3, bidirectional=False), e + np.arange(5.0))


def test_simulate_warns_when_the_frames_are_far_from_the_thermostat(caplog):
    """A model that heats up (a pre-trained network reached 5e18 K in a 3 ps evaluation) gets one warning
    line; a small box's own fluctuations (271-332 K at 298 K) and a cold model within half do not."""
    from dmd_dist.simulate import warn_if_unstable

    with caplog.at_level("WARNING", logger="dmd_dist"):
        assert [warn_if_unstable(t, 298.15) for t in (271.0, 332.0, 150.0, 596.0)] == [False] * 4
        assert not caplog.records
        assert warn_if_unstable(5.2e18, 298.15) and warn_if_unstable(140.0, 298.15)
        assert warn_if_unstable(float("nan"), 298.15)
    assert len(caplog.records) == 3 and "5.2e+18 K, the thermostat at 298.15 K" in caplog.records[0].getMessage()
