"""`make test-slurm`: run the jobs/ SLURM script on a throw-away single-node SLURM cluster.

When root on a Debian-like machine: install slurmd/slurmctld/slurm-client/munge if missing
(apt, ~15 s), write a one-node slurm.conf, start munged/slurmctld/slurmd, then

1. ``sbatch --wait --ntasks=2 jobs/single.slurm jobs/tiny.toml OUT`` must exit 0 and OUT must
   hold a 2-rank run (mpi_size 2, all observables) whose means equal a serial run to 1e-12;
2. a longer job is sent SIGTERM through ``scancel --batch`` after its first checkpoint (as
   ``#SBATCH --signal=B:TERM@120`` would): the script passes SIGUSR1 to srun, the ranks
   checkpoint and exit 3, the script requeues the job, the requeued job resumes and completes
   with a result equal to a serial uninterrupted run (to 1e-12);
3. ``jobs/heis64_sweep.slurm`` as a 2-task array on the tiny config: one output per task with
   its ``model.hz``;

and shut the daemons down again.  Not root, no apt, or an existing SLURM configuration that is
not ours: print SKIP and exit 0.  Everything has a timeout; the whole check takes < 3 minutes.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

PY = sys.executable
CONF = "/etc/slurm/slurm.conf"
MARKER = "# written by ctwa-hpc tests/slurm_check.py"
PACKAGES = ["slurmd", "slurmctld", "slurm-client", "munge"]
DEADLINE = time.time() + 170
MEDIUM = ["--set", "model.n_sites=8", "--set", "method.cluster_size=4",
          "--set", "method.samples=2000", "--set", "time.t_max=10.0", "--set", "time.dt=0.01",
          "--set", "output.checkpoint_every_s=0.2"]


class Skip(Exception):
    pass


def log(msg):
    print(f"[slurm_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd, timeout=60, check=True, **kw):
    left = DEADLINE - time.time()
    if left <= 0:
        raise TimeoutError("slurm_check: out of time")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=min(timeout, left), **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


# -- cluster setup --------------------------------------------------------------------------
def install():
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if not shutil.which("apt-get"):
        raise Skip("SLURM is not installed and apt-get is not available")
    log("installing " + " ".join(PACKAGES) + " with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    r = sh(cmd, timeout=120, check=False, env=env)
    if r.returncode != 0:
        sh(["apt-get", "update", "-qq"], timeout=90, check=False, env=env)
        r = sh(cmd, timeout=120, check=False, env=env)
    if r.returncode != 0 or not shutil.which("slurmctld"):
        raise Skip(f"could not install SLURM with apt-get:\n{r.stderr[-2000:]}")


def write_conf():
    if os.path.exists(CONF) and MARKER not in open(CONF).read():
        raise Skip(f"{CONF} exists and was not written by this check: not touching it")
    host = socket.gethostname().split(".")[0]
    node = sh(["slurmd", "-C"], timeout=30).stdout.splitlines()[0]
    for d in ("/etc/slurm", "/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm",
              "/run/munge"):
        os.makedirs(d, exist_ok=True)
    conf = f"""{MARKER}
ClusterName=ctwatest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerParameters=batch_sched_delay=0
MinJobAge=30
{node} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    with open(CONF, "w") as fh:
        fh.write(conf)


def _pid(path):
    try:
        pid = int(open(path).read().split()[0])
        os.kill(pid, 0)
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return None if state in ("Z", "X") else pid  # a zombie is not a running daemon
    except (OSError, ValueError, IndexError):
        return None


def start():
    started = []
    if _pid("/run/munge/munged.pid") is None:
        shutil.chown("/run/munge", "munge", "munge")
        if os.path.exists("/etc/munge/munge.key"):
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        sh(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], timeout=30)
        started.append("munged")
    for daemon in ("slurmctld", "slurmd"):
        if _pid(f"/run/{daemon}.pid") is None:
            sh([daemon], timeout=30)
            started.append(daemon)
    t0 = time.time()
    while time.time() - t0 < 30:
        r = sh(["sinfo", "-h", "-o", "%T"], timeout=10, check=False)
        if r.returncode == 0 and r.stdout.strip().rstrip("*") in ("idle", "mixed"):
            return started
        time.sleep(0.3)
    raise RuntimeError(f"SLURM node not idle after 30 s: {r.stdout} {r.stderr}")


def stop(started):
    if shutil.which("scancel"):
        sh(["scancel", "--name=ctwa"], timeout=10, check=False)
    if "slurmctld" in started or "slurmd" in started:
        sh(["scontrol", "shutdown"], timeout=30, check=False)
        for name in ("slurmctld", "slurmd"):
            for _ in range(50):
                if _pid(f"/run/{name}.pid") is None:
                    break
                time.sleep(0.1)
    if "munged" in started:
        pid = _pid("/run/munge/munged.pid")
        if pid:
            os.kill(pid, signal.SIGTERM)


# -- the checks ---------------------------------------------------------------------------------
def sbatch(args, env):
    cmd = ["sbatch", "--wait", "--parsable", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(info):
    return any(f"JobState={s} " in info for s in ("COMPLETED", "FAILED", "CANCELLED",
                                                   "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"))


def job_info(job):
    return sh(["scontrol", "-o", "show", "job", job], timeout=10, check=False).stdout


def wait(p, timeout):
    try:
        return p.communicate(timeout=max(1, min(timeout, DEADLINE - time.time())))
    except subprocess.TimeoutExpired:
        p.kill()
        raise


def logs(tmp, prefix):
    return "".join(open(os.path.join(tmp, x)).read() for x in sorted(os.listdir(tmp))
                   if x.startswith(prefix))


def serial_run(cfg, out, extra=()):
    from mpi_helper import check, run_cli
    check(run_cli(["run", cfg, "-o", out, "-q", *extra], timeout=90))


def compare(path, ref_path, size):
    from ctwa_hpc.output import hdf5 as io
    from mpi_helper import max_diff
    data, ref = io.load(path), io.load(ref_path)
    a = data["attrs"]
    assert a["mpi_size"] == size, f"mpi_size {a['mpi_size']} != {size}"
    assert set(data["observables"]) == set(ref["observables"]) and data["observables"]
    diff = max_diff(ref, data)
    assert diff < 1e-12, f"means differ from the serial run by {diff}"
    return diff, a


def check_jobs(tmp):
    env = {**os.environ, "CTWA_PYTHON": PY, "CTWA_MAX_REQUEUE": "2",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    tiny = os.path.join("jobs", "tiny.toml")
    ref, out = os.path.join(tmp, "ref.h5"), os.path.join(tmp, "slurm.h5")
    serial_run(tiny, ref)
    log("sbatch --wait --ntasks=2 jobs/single.slurm jobs/tiny.toml")
    p = sbatch(["--ntasks=2", f"--output={tmp}/job1-%j.out", "jobs/single.slurm", tiny, out],
               env)
    so, se = wait(p, 90)
    assert p.returncode == 0, f"job failed ({p.returncode}):\n{so}{se}\n{logs(tmp, 'job1')}"
    diff, a = compare(out, ref, 2)
    log(f"job 1 ok: mpi_size={a['mpi_size']} writer={a['writer']} max |diff| vs serial {diff:.2e}")

    # job 2: SIGTERM before the limit -> checkpoint, exit 3, requeue, resume.  `sbatch --wait`
    # returns when the first run ends (it does not follow a requeue): poll the job instead.
    ref2, out2 = os.path.join(tmp, "ref2.h5"), os.path.join(tmp, "slurm2.h5")
    serial_run(tiny, ref2, MEDIUM)
    log("job 2: SIGTERM to the batch script (as --signal=B:TERM), requeue, resume")
    job = sh(["sbatch", "--parsable", "--ntasks=2", f"--output={tmp}/job2-%j.out",
              "jobs/single.slurm", tiny, out2, *MEDIUM], timeout=30, cwd=ROOT,
             env={**env, "CTWA_TEST_BLOCK_DELAY_S": "0.04"}).stdout.strip().split(";")[0]
    manifest = out2 + ".ckpt/manifest.json"
    t0 = time.time()
    while not os.path.exists(manifest):
        info = job_info(job)
        assert not finished(info), f"job 2 ended before its first checkpoint:\n{info}\n" \
            + logs(tmp, "job2")
        assert time.time() - t0 < 60, "job 2 wrote no checkpoint within 60 s"
        time.sleep(0.05)
    time.sleep(0.3)
    sh(["scancel", "--batch", "--signal=TERM", job], timeout=10)
    t0, info, relaunched = time.time(), "", 0
    while time.time() - t0 < 100:
        info = job_info(job)
        if "Restarts=0" not in info:
            if "JobState=PENDING" in info and "Reason=BeginTime" in info:
                # a requeued job waits ~2 min (BeginTime): let it start again now
                sh(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=10)
            elif finished(info) and "JobState=FAILED" in info and "RunTime=00:00:00" in info \
                    and relaunched < 2:
                # slurmd race: a requeue that arrives while slurmd still holds the killed job
                # is dropped at launch ("Job N already killed, do not launch batch job"), the
                # batch script never runs and the job reads FAILED after 0 s.  Requeue again.
                relaunched += 1
                time.sleep(1.0)
                sh(["scontrol", "requeue", job], timeout=10)
            elif finished(info):
                break
        time.sleep(0.2)
    text = logs(tmp, "job2")
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, f"{info}\n{text}"
    assert "exited with code 3" in text and "requeueing" in text, text
    assert "resumed from" in text, text
    diff, a = compare(out2, ref2, 2)
    log(f"job 2 ok: interrupted, requeued, resumed; max |diff| vs uninterrupted serial {diff:.2e}")

    # job 3: the array sweep script over model.hz (tiny config instead of N = 64)
    from ctwa_hpc.output import hdf5 as io
    log("job 3: sbatch --wait --array=0-1 jobs/heis64_sweep.slurm (CONFIG=jobs/tiny.toml)")
    outdir = os.path.join(tmp, "sweep")
    p = sbatch(["--array=0-1", "--ntasks=2", f"--output={tmp}/job3-%A_%a.out",
                "jobs/heis64_sweep.slurm", "-q"], {**env, "CONFIG": tiny, "OUTDIR": outdir})
    so, se = wait(p, 90)
    assert p.returncode == 0, f"job 3 failed ({p.returncode}):\n{so}{se}\n{logs(tmp, 'job3')}"
    for hz in ("1.0", "2.0"):
        data = io.load(os.path.join(outdir, f"heis64_hz{hz}.h5"))
        assert data["config"]["model"]["hz"] == float(hz) and data["attrs"]["mpi_size"] == 2
    log("job 3 ok: one output per array task with its model.hz")


def main():
    if os.geteuid() != 0:
        print("SKIP test-slurm: not root (a local SLURM needs root to install and start)")
        return 0
    started = []
    try:
        install()
        write_conf()
        started = start()
        log(f"SLURM up (started: {', '.join(started) or 'already running'})")
        with tempfile.TemporaryDirectory(prefix="ctwa-slurm-") as tmp:
            os.chmod(tmp, 0o755)
            check_jobs(tmp)
    except Skip as exc:
        print(f"SKIP test-slurm: {exc}")
        return 0
    except (AssertionError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        print(f"FAIL test-slurm: {exc}", file=sys.stderr)
        return 1
    finally:
        stop(started)
    print("test-slurm: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
