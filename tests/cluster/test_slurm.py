"""The sbatch templates submitted to a real SLURM (the one-node test cluster of tests/cluster/slurm_up.sh,
found at DMD_SLURM_DIR, default /tmp/dmd-dist-slurm): they run, are preempted by the scheduler, requeue
themselves and resume.  Each job is a template as shipped, adapted only by its documented variables
(DMD_SETUP_EXTRAS=dev, DMD_CPU_DEVICES) and sbatch's own options (partition, no GPUs, CPUs, tasks, time).

- multinode.sbatch, 2 tasks with one CPU device each: `scancel --signal=TERM` mid-run reaches both tasks,
  both save and exit 3, the job requeues itself, resumes and completes with the one-process result.
- train.sbatch, one task with 2 CPU devices: the time limit's --signal SIGTERM (sent by slurmctld, not by
  the test) stops it after a checkpoint, the job requeues itself and resumes; a plain `scancel` of the
  resumed run ends the job, and the next submission of the same command resumes from the last checkpoint
  and finishes bit-identical to the uninterrupted one-process run.

Fails (never skips) when the cluster is not up.  Every wait is bounded; jobs left behind are cancelled.
"""

import os
import re
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from cluster_helpers import COMMON, CONFIG, ROOT, assert_same_run, base_env, metrics

pytestmark = pytest.mark.cluster

SLURM_DIR = Path(os.environ.get("DMD_SLURM_DIR", "/tmp/dmd-dist-slurm"))
SLURM_CONF = SLURM_DIR / "etc/slurm.conf"
WAIT = 300  # seconds, for any one thing a test waits for
MULTINODE_ITERATIONS = 20
TIME_LIMIT_ITERATIONS = 200  # conftest.REFERENCE_ITERATIONS: 35-50 s of training on this machine
SIGNAL_LEAD = 3  # --signal=TERM@3 with --time=1: see test_train_sbatch_...


class Cluster:
    def __init__(self, tmp):
        self.tmp = tmp
        self.jobs = []

    def env(self, **extra):
        return base_env(SLURM_CONF=str(SLURM_CONF), **extra)

    def run(self, *cmd, check=True, timeout=60):
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), cwd=ROOT, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)}: exit {r.returncode}: {r.stdout}{r.stderr}")
        return r.stdout

    def partition(self):
        return self.run("sinfo", "-h", "-o", "%P").split()[0].rstrip("*")

    def submit(self, template, workdir, options, variables, args, name):
        """sbatch TEMPLATE CONFIG WORKDIR ARGS from the repository root, output to the test's tmp dir."""
        cmd = ["sbatch", "--parsable", f"--job-name={name}", f"--output={self.tmp}/{name}-%j.out",
               f"--partition={self.partition()}", "--gpus-per-node=0", *options,
               str(ROOT / template), str(CONFIG), str(workdir), *COMMON, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env(DMD_SETUP_EXTRAS="dev", **variables),
                           cwd=ROOT, timeout=60)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        job = r.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def info(self, job):
        out = self.run("scontrol", "show", "job", "-o", job, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def output(self, job, name):
        path = self.tmp / f"{name}-{job}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnose(self, job, name):
        logs = ""
        for log in ("slurmctld.log", "slurmd.log"):
            lines = [x for x in (SLURM_DIR / "log" / log).read_text(errors="replace").splitlines()
                     if "debug" not in x]
            logs += f"\n--- {log} (last lines) ---\n" + "\n".join(lines[-15:])
        return (f"\n--- job {job}: {self.info(job)}\n--- its output (last 4000 characters) ---\n"
                f"{self.output(job, name)[-4000:]}{logs}")

    def wait(self, job, name, what, done, timeout=WAIT):
        """Poll until done(info) is true; fail on timeout, or at once if the job ended without it."""
        t0 = time.time()
        while True:
            info = self.info(job)
            if done(info):
                return info
            if info.get("JobState") in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                                        "BOOT_FAIL", "DEADLINE", "PREEMPTED"):
                pytest.fail(f"job {job} ended {info['JobState']} while waiting for {what}" + self.diagnose(job, name))
            if time.time() - t0 > timeout:
                pytest.fail(f"job {job}: no {what} within {timeout} s" + self.diagnose(job, name))
            time.sleep(0.2)

    def cancel_all(self):
        if self.jobs:
            self.run("scancel", "--full", "--signal=KILL", *self.jobs, check=False)
            self.run("scancel", *self.jobs, check=False)

    def time_limit_passes(self):
        """When slurmctld ran its time-limit pass (every 30 s: time limits, and --signal warnings), from its log."""
        times = []
        for line in (SLURM_DIR / "log/slurmctld.log").read_text(errors="replace").splitlines():
            if "Testing job time limits" in line:
                times.append(datetime.fromisoformat(line[1:line.index("]")]).timestamp())
        return times


@pytest.fixture(scope="session")  # session, like `reference`, so that a missing cluster fails before that run
def cluster(tmp_path_factory):
    if not SLURM_CONF.exists():
        pytest.fail(f"no SLURM test cluster at {SLURM_DIR}: run `bash tests/cluster/slurm_up.sh` as root first "
                    "(bash launch/test.sh does), or deselect these tests with -m 'not cluster'")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=c.env(), timeout=30)
    if r.returncode != 0 or r.stdout.split() != ["idle"]:
        pytest.fail(f"the SLURM test cluster at {SLURM_DIR} is not up with an idle node (sinfo: {r.stdout}{r.stderr}); "
                    "run `bash tests/cluster/slurm_up.sh` as root")
    yield c
    c.cancel_all()


@pytest.fixture(autouse=True)
def _cancel_jobs_left(cluster):
    """A failed test's jobs do not run on into the next test."""
    yield
    cluster.cancel_all()
    cluster.jobs.clear()


def unique(name):
    return f"dmd-test-{name}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{uuid.uuid4().hex[:6]}"


def test_the_cluster_runs_job_steps(cluster):
    version = cluster.run("sinfo", "--version").strip()
    node = cluster.run("scontrol", "show", "node", "-o")
    assert f"CPUTot={os.cpu_count()}" in node and "Gres=(null)" in node, node
    out = cluster.run("srun", f"--partition={cluster.partition()}", "--ntasks=2", "--label", "printenv", "SLURM_PROCID")
    assert sorted(out.split("\n")[:2]) == ["0: 0", "1: 1"], (version, out)


def test_multinode_sbatch_two_tasks_scancel_term_requeue_resume(cluster, tmp_path, reference):
    name, work = unique("multinode"), tmp_path / "run"
    job = cluster.submit("slurm/multinode.sbatch", work, ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"],
                         dict(DMD_CPU_DEVICES="1"), ["--set", f"train.iterations={MULTINODE_ITERATIONS}"], name)
    cluster.wait(job, name, "first iteration", lambda i: i.get("JobState") == "RUNNING" and len(metrics(work)) >= 1)
    cluster.run("scancel", "--signal=TERM", job)  # to every task of the running step (not the batch shell)
    cluster.wait(job, name, "requeue", lambda i: int(i.get("Restarts", 0)) >= 1)
    first = cluster.output(job, name)
    stopped = re.findall(r"^([01]): stopped by a preemption signal after iteration (\d+)", first, re.M)
    assert sorted(t for t, _ in stopped) == ["0", "1"], first[-3000:]  # every task saved and stopped ...
    assert len({k for _, k in stopped}) == 1, stopped  # ... after the same iteration
    assert "Exited with exit code 3" in first and "requeueing job" in first, first[-3000:]
    k = int(stopped[0][1])
    assert 1 <= k < MULTINODE_ITERATIONS
    info = cluster.wait(job, name, "completion", lambda i: i.get("JobState") == "COMPLETED")
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "1", info
    out = cluster.output(job, name)
    assert re.search(rf"^0: .*resuming from iteration {k} ", out, re.M), out[-3000:]
    # The output names the processes: both tasks' labelled lines, and the lead's layout line.
    assert "4 replicas on 2 device(s) in 2 process(es)" in out and "2 tasks on" in out, out[-3000:]
    rows = metrics(work)
    assert len(rows) == MULTINODE_ITERATIONS
    assert_same_run(rows, reference)


def test_train_sbatch_time_limit_signal_requeue_then_scancel_and_resubmit_bit_identical(cluster, tmp_path, reference):
    """slurmctld checks time limits (and sends --signal warnings) every 30 s, so a signal may come up to
    30 s before its lead time.  With --time=1 and --signal=TERM@3 it comes at the first check at least
    60 - 3 - 30 = 27 s after the start.  The job is submitted right after a check (read from slurmctld's
    log): the next check, 27-31 s after the start, sends it, in the middle of the 200 iterations and after
    the start-up (about 10 s here; a signal before dmd-dist's handler is installed would kill it)."""
    name, work = unique("train"), tmp_path / "run"
    options = ["--cpus-per-task=2"]
    variables = dict(DMD_CPU_DEVICES="2")
    args = ["--set", f"train.iterations={TIME_LIMIT_ITERATIONS}"]
    assert len(reference) >= TIME_LIMIT_ITERATIONS
    for attempt in range(2):
        passes = len(cluster.time_limit_passes())
        t0 = time.time()
        while len(cluster.time_limit_passes()) == passes:
            assert time.time() - t0 < 45, "slurmctld logged no time-limit pass for 45 s (SlurmctldDebug=debug2?)"
            time.sleep(0.1)
        check = cluster.time_limit_passes()[-1]
        job = cluster.submit("slurm/train.sbatch", work, [*options, "--time=1", f"--signal=TERM@{SIGNAL_LEAD}"],
                             variables, args, name)
        info = cluster.wait(job, name, "start", lambda i: i.get("JobState") == "RUNNING", timeout=30)
        start = datetime.fromisoformat(info["StartTime"]).timestamp()
        if start + 60 - SIGNAL_LEAD - 30 <= check + 30:  # the signal goes at the next check
            break
        cluster.run("scancel", "--full", "--signal=KILL", job)  # started too late for that check: once more
        cluster.run("scancel", job)
        cluster.wait(job, name, "cancellation", lambda i: i.get("JobState") == "CANCELLED", timeout=60)
        work = tmp_path / f"run{attempt + 1}"
    else:
        pytest.fail(f"job {job} started {start - check:.1f} s after slurmctld's time-limit pass, twice")

    # 1. SIGTERM from the time limit's --signal, exit 3, requeue (by the script), resume.
    cluster.wait(job, name, "requeue after the time-limit signal", lambda i: int(i.get("Restarts", 0)) >= 1,
                 timeout=120)
    first = cluster.output(job, name)
    assert "received SIGTERM" in first, first[-3000:]
    k1 = int(re.search(r"stopped by a preemption signal after iteration (\d+)", first).group(1))
    assert 1 <= k1 < TIME_LIMIT_ITERATIONS and "requeueing job" in first, first[-3000:]
    assert "0: " in first and "4 replicas on 2 device(s) in 1 process(es)" in first and "1 task on" in first
    # 2. The resumed run, ended by a plain scancel once it has done an iteration of its own.
    cluster.wait(job, name, "an iteration after the resume",
                 lambda i: f"resuming from iteration {k1} " in cluster.output(job, name) and len(metrics(work)) > k1)
    cluster.run("scancel", job)
    info = cluster.wait(job, name, "cancellation", lambda i: i.get("JobState") == "CANCELLED", timeout=90)
    assert info["Restarts"] == "1", info
    done = len(metrics(work))
    assert k1 < done < TIME_LIMIT_ITERATIONS
    # 3. The next submission of the same command (no short time limit now) resumes and finishes.
    job2 = cluster.submit("slurm/train.sbatch", work, options, variables, args, name)
    info = cluster.wait(job2, name, "completion", lambda i: i.get("JobState") == "COMPLETED")
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "0", info
    out = cluster.output(job2, name)
    k3 = int(re.search(r"resuming from iteration (\d+) ", out).group(1))
    assert k1 < k3 <= done, out[-3000:]
    rows = metrics(work)
    assert [m["params_sha256"] for m in rows] == [m["params_sha256"] for m in reference[:TIME_LIMIT_ITERATIONS]]
