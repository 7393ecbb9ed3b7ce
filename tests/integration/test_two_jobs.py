"""Two two-process jobs at once on one node, each with its own coordinator port (as multinode.sbatch
derives one from the job id): they stay apart, and each gives the one-process result.  Four processes
on a small machine: slow, hence the generous per-process limit of the helpers, and two iterations (of the
reference's five) are enough to show each job computed alone."""

from multiprocess_helpers import assert_same_run, finish, free_port, metrics, start_slurm_pair


def test_two_jobs_on_one_node_with_their_own_ports_stay_apart(tmp_path, one_process):
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    jobs = [start_slurm_pair(tmp_path / f"job{i}", port, job_id=str(4242 + i),
                             extra=("--set", "train.iterations=2")) for i, port in enumerate(ports)]
    for i, procs in enumerate(jobs):
        codes, errs = finish(procs)
        assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
        # Process 0's coordination service listened on loopback (the faked step's node is `localhost`).
        assert f"coordinator service listening on localhost:{ports[i]}" in errs[0]
        assert "4 replicas on 2 device(s) in 2 process(es)" in errs[0]
        rows = metrics(tmp_path / f"job{i}")
        assert len(rows) == 2
        assert_same_run(rows, one_process)
