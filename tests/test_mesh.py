"""mesh.py: which replicas a process holds, and which devices `simulate` shares its replicas among."""

from dmd_dist.mesh import local_replicas, replica_mesh, sharing_devices


def test_one_process_holds_every_replica():
    assert local_replicas(8, replica_mesh()) == (0, 8)


def test_simulate_takes_the_most_devices_that_share_the_replicas_evenly():
    devices = list("abcdefgh")
    assert [len(sharing_devices(n, devices)) for n in (1, 2, 3, 4, 6, 7, 12, 16)] == [1, 2, 3, 4, 6, 7, 6, 8]
    assert sharing_devices(4, devices[:3]) == ["a", "b"]
