"""Per-trajectory gradient magnitude against window length for liquid argon (docs/method.md §3).

Samples R replica frames from a Langevin chain, then measures d D(T)/d(sigma, epsilon) for every window
T up to T_max in one forward-mode pass (dmd_dist.window.gradient_growth).  Prints one JSON object and
writes docs/gradient_growth.png.  `--quick` is a smoke-sized run.

    python benchmarks/gradient_growth.py [--quick] [--replicas 16] [--tmax 16] [--out docs/gradient_growth.png]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dmd_dist import integrators, potentials, systems  # noqa: E402
from dmd_dist.adjoint import Segment  # noqa: E402
from dmd_dist.driver import OverflowCounter, scan_steps  # noqa: E402
from dmd_dist.records import recorder  # noqa: E402
from dmd_dist.window import gradient_growth, parameter_directions, suggest_window  # noqa: E402

TAU = 2.156  # ps, sigma sqrt(m/epsilon) for argon


def main():
    import devices  # benchmarks/devices.py

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--tmax", type=float, default=8 * TAU, help="longest window, ps")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/gradient_growth.png"))
    devices.add_argument(ap)
    args = ap.parse_args()
    devices.select(args.device)
    n_atoms, replicas, tmax, dt = (108, args.replicas, args.tmax, 0.004)
    if args.quick:
        replicas, tmax = 4, 1.0
    key = jax.random.PRNGKey(0)
    s = systems.lattice_fluid(n_atoms, 94.4, key, density=1.374)
    # Switched cutoff: continuous forces, so trajectory derivatives are those of the ensemble.
    pot, params = potentials.lennard_jones_potential(s, 0.3405, 0.996, 0.8, switch_onset=0.7, neighbor_mode="dense")
    s = systems.prepare(s, pot, params, 94.4, key, 2000, dt, 1.0, melt_temperature=190.0)
    dyn = integrators.Dynamics(pot, s.masses)
    lang = integrators.langevin_baoab(dyn, dt, 94.4, 1.0)
    nb = pot.neighbors.allocate(jnp.broadcast_to(s.positions, (replicas,) + s.positions.shape))
    st = jax.vmap(lang.init, (None, None, None, 0, 0))(params, s.positions, s.velocities, nb,
                                                       jax.random.split(key, replicas))
    st = jax.jit(jax.vmap(lambda x: scan_steps(lang.step, params, x, 500)[0]))(st)  # decorrelate the frames
    steps = int(round(tmax / dt / 10)) * 10
    seg = Segment(dyn, dt, steps, 10, recorder(("vacf",), s, pot))
    t0 = time.perf_counter()
    times, g = gradient_growth(seg, params, st, parameter_directions(params), OverflowCounter(), 1.25)
    seconds = time.perf_counter() - t0
    scan = suggest_window(times, g)
    eps_grad = g[:, 0, :]  # parameter_directions follows the pytree order: epsilon, sigma
    picks = sorted({int(np.argmin(np.abs(times / TAU - w))) for w in (0.125, 0.25, 0.5, 1, 2, 4, 8)})
    out = {
        "n_atoms": n_atoms, "replicas": replicas, "dt_ps": dt, "tau_ps": TAU, "seconds": seconds,
        "suggested_window_ps": scan.suggested, "suggested_window_tau": scan.suggested / TAU,
        "table": [{"window_tau": round(float(times[k] / TAU), 4),
                   "per_trajectory_rms_dD_deps": float(np.sqrt(np.mean(eps_grad[:, k] ** 2))),
                   "ensemble_dD_deps": float(eps_grad[:, k].mean()),
                   "stderr_dD_deps": float(eps_grad[:, k].std(ddof=1) / np.sqrt(replicas)),
                   "snr": float(scan.snr[k])} for k in picks],
    }
    out.update(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()])
    print(json.dumps(out, indent=2))
    plot(times / TAU, scan, eps_grad, args.out)
    print(f"plot: {args.out}", file=sys.stderr)


def plot(t_tau, scan, eps_grad, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.semilogy(t_tau, np.sqrt(np.mean(eps_grad**2, axis=0)), label="per-trajectory rms |dD/dε|")
    a.semilogy(t_tau, np.abs(eps_grad.mean(0)), label="|ensemble mean dD/dε|")
    a.semilogy(t_tau, eps_grad.std(0, ddof=1) / np.sqrt(eps_grad.shape[0]), label="standard error")
    a.set_xlabel("window T / τ")
    a.set_ylabel("nm²/ps per kJ/mol")
    a.legend(fontsize=8)
    a.set_title("gradient growth, liquid argon (108 atoms)")
    b.semilogy(t_tau, scan.snr)
    b.axvline(scan.suggested / TAU, color="k", ls="--", label=f"suggested {scan.suggested / TAU:.2f} τ")
    b.set_xlabel("window T / τ")
    b.set_ylabel("signal / noise of the ensemble gradient")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
