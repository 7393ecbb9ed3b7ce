"""Process start-up decisions of train/parallel.py: which launcher started us, bad [distributed] settings
refused with the key named (before any device is touched), the set-up barrier (two processes), where the
coordinator listens, and how a lost peer process is named."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pydantic
import pytest

from dmd_dist.errors import InputError
from dmd_dist.config import DistributedConfig
from dmd_dist.train.parallel import bind_address, detect_mode, initialize

SRUN = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "8", "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1"}


@pytest.mark.parametrize("env, mode", [
    ({}, "local"),
    (SRUN, "slurm"),
    ({**SRUN, "SLURM_NTASKS": "1"}, "local"),  # an allocation with one task: nothing to coordinate
    ({"SLURM_JOB_ID": "7"}, "local"),  # sbatch shell, outside srun
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "mpi"),  # Open MPI
    ({"PMI_SIZE": "2"}, "mpi"),  # MPICH (hydra)
    ({"PMI_SIZE": "1"}, "local"),
])
def test_launcher_detection(env, mode):
    assert detect_mode(env) == mode


@pytest.mark.parametrize("settings, key", [
    ({"coordinator": "node1:1234"}, "distributed.coordinator"),
    ({"coordinator": "node1:1234", "num_processes": 2, "process_id": 2}, "distributed.process_id"),
    ({"mode": "slurm"}, "distributed.mode"),
])
def test_bad_distributed_settings_name_the_key(monkeypatch, settings, key):
    for v in SRUN:
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(InputError) as e:
        initialize(DistributedConfig(**settings))
    assert e.value.key == key


BARRIER_PROCESS = textwrap.dedent("""
    import json, sys, time
    import jax
    from dmd_dist.train.parallel import any_process, barrier
    rank, port, late = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank)
    time.sleep(late * rank)  # process 1 finishes its set-up `late` seconds after process 0
    t0 = time.monotonic()
    barrier("set-up", 60)
    waited = time.monotonic() - t0
    print(json.dumps({"waited": waited, "any": any_process(rank == 1)}))
""")


def test_barrier_holds_every_process_until_the_last_arrives():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen(["timeout", "-s", "KILL", "120", sys.executable, "-c", BARRIER_PROCESS, str(rank),
                               str(port), "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for rank in range(2)]
    out = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], out[0][1][-2000:] + out[1][1][-2000:]
    first, last = (json.loads(o.strip().splitlines()[-1]) for o, _ in out)
    assert first["waited"] > 3.0  # process 0 was held for the 4 s process 1 slept
    assert last["waited"] < 3.0
    assert first["any"] and last["any"]  # and a collective works afterwards


@pytest.mark.parametrize("coordinator, all_local, expected", [
    ("localhost:1234", False, "localhost:1234"),  # a loopback coordinator: every process is on this node
    ("127.0.0.1:1234", False, "127.0.0.1:1234"),
    ("[::1]:1234", False, "[::1]:1234"),
    ("192.0.2.7:1234", False, "192.0.2.7:1234"),  # a real interface (TEST-NET address: no DNS needed)
    ("no-such-host.invalid:1234", True, None),  # unresolvable: jax's default, its connect names the host
])
def test_bind_address(coordinator, all_local, expected):
    assert bind_address(coordinator, "host", all_local) == expected
    assert bind_address(coordinator, "all", all_local) is None  # jax's default: every interface


def test_a_host_name_that_resolves_to_loopback_binds_only_when_every_process_is_local(monkeypatch):
    """Debian's /etc/hosts maps the machine's own name to 127.0.1.1; other nodes resolve it to a real
    interface, which a loopback-only service would refuse."""
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                 ("127.0.1.1", 1234))])
    assert bind_address("node1:1234", "host", all_local=False) is None
    assert bind_address("node1:1234", "host", all_local=True) == "node1:1234"


def test_heartbeat_timeout_is_validated():
    assert DistributedConfig().heartbeat_timeout == 30
    for bad in (0, 4, 3601):
        with pytest.raises(pydantic.ValidationError):
            DistributedConfig(heartbeat_timeout=bad)
    with pytest.raises(pydantic.ValidationError):
        DistributedConfig(bind="lo")


LISTEN_PROCESS = textwrap.dedent("""
    import socket, sys
    from dmd_dist.config import DistributedConfig
    from dmd_dist.train.parallel import initialize
    port, bind, other = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    initialize(DistributedConfig(coordinator=f"localhost:{port}", num_processes=1, process_id=0, bind=bind))
    for host in ("127.0.0.1", other):
        with socket.socket() as s:
            s.settimeout(5)
            print(host, s.connect_ex((host, port)) == 0)
""")


def non_loopback_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only the route (and the source address) is looked up
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("bind, reachable_from_outside", [("host", False), ("all", True)])
def test_the_coordinator_listens_on_its_own_address_only(bind, reachable_from_outside):
    """A one-process jax.distributed: the coordination service accepts connections on loopback, and on the
    node's network interface only with distributed.bind = "all" (jax's default, [::]:port)."""
    other = non_loopback_address()
    if other is None:
        pytest.skip("this machine has no network interface besides loopback")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run(["timeout", "-s", "KILL", "120", sys.executable, "-c", LISTEN_PROCESS, str(port), bind, other],
                       capture_output=True, text=True, env=env, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["127.0.0.1", "True", other, str(reachable_from_outside)]


class _Lost(Exception):
    pass


@pytest.mark.parametrize("message, me, named", [
    ("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read error "
     "[127.0.0.1]:11143: Connection reset by peer", 1, "lost process 0 (a collective failed: Connection reset by peer)"),
    ("INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout. This "
     "indicates that the remote task has failed", 0, "lost process 1 (no heartbeat"),
    ("UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n1\nThe tasks have crashed.", 0,
     "lost process 1 (no heartbeat"),
    ("UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was preempted/died/restarted "
     "unexpectedly or this task is experiencing network issues.", 1, "lost process 0 (the coordination service"),
])
def test_peer_lost_names_the_lost_process(monkeypatch, message, me, named):
    from dmd_dist.train import parallel

    monkeypatch.setattr(parallel.jax, "process_count", lambda: 2)
    monkeypatch.setattr(parallel.jax, "process_index", lambda: me)
    try:
        try:
            raise _Lost(message)
        except _Lost as e:
            raise RuntimeError("a wrapper's own words") from e
    except RuntimeError as e:
        lost = parallel.peer_lost(e)
    assert str(lost).startswith(f"process {me} of 2: {named}")
    assert "resumed from its last checkpoint" in str(lost)
    assert parallel.peer_lost(ValueError("an ordinary bug")) is None
