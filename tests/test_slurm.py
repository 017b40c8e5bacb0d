"""run_all.sh --slurm on a real SLURM: a one-node cluster on localhost (Debian's slurm-wlm and
munge, which .ci/run installs), started here. Skips, with the reason, where they are missing."""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT

TOOLS = ("slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "munge", "munged")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment (SLURM_CONF, PATH with this python) of a running one-node cluster."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): "
                    "apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their user only when started as root")
    d = tmp_path_factory.mktemp("slurm")
    conf = d / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=local", "SlurmctldHost=localhost(127.0.0.1)", "SlurmUser=root",
        "SlurmdUser=root", "AuthType=auth/munge", f"StateSaveLocation={d}/state",
        f"SlurmdSpoolDir={d}/spool", f"SlurmctldPidFile={d}/slurmctld.pid",
        f"SlurmdPidFile={d}/slurmd.pid", f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}", f"SlurmctldLogFile={d}/slurmctld.log",
        f"SlurmdLogFile={d}/slurmd.log", "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none", "SchedulerType=sched/builtin", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none",
        "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    env = {**os.environ, "SLURM_CONF": str(conf),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:  # no munged yet
        os.makedirs("/run/munge", exist_ok=True)
        subprocess.run(["munged", "--force"], check=True)
    subprocess.run(["slurmctld", "-c"], env=env, check=True)
    subprocess.run(["slurmd", "-N", "localhost"], env=env, check=True)
    try:
        deadline = time.time() + 60
        while subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                             text=True).stdout.strip() != "idle":
            assert time.time() < deadline, (d / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:  # the jobs' step daemons end first, then the cluster
        deadline = time.time() + 30
        while time.time() < deadline and (
                subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout
                or subprocess.run(["pgrep", "slurmstepd"], capture_output=True).returncode == 0):
            time.sleep(0.5)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
        for pid in ("slurmd.pid", "slurmctld.pid"):
            if (d / pid).exists():
                subprocess.run(["kill", (d / pid).read_text().strip()], capture_output=True)


def _ours(tables_md):
    """The table rows of TABLES.md without wall time and device: label, paper, ours, seeds."""
    return [l.split(" | ")[:4] for l in tables_md.splitlines() if l.startswith("| ")]


def test_a_quick_table_through_a_slurm_job_array_equals_a_local_run(slurm, tmp_path, ptb_data_dir):
    run_all = ["bash", os.path.join(ROOT, "run_all.sh"), "--quick", "--only", "indrnn-ptb",
               "--data-dir", ptb_data_dir]
    local = subprocess.run(run_all + ["--out-dir", str(tmp_path / "local")], env=slurm,
                           capture_output=True, text=True)
    assert local.returncode == 0, local.stderr
    out = tmp_path / "slurm"
    r = subprocess.run(run_all + ["--slurm", "--submit", "--out-dir", str(out)], env=slurm,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "submitted: " in r.stdout, r.stdout + r.stderr
    assert len((out / "slurm" / "runs-1.txt").read_text().splitlines()) == 2  # two tasks
    deadline = time.time() + 600
    done = out / "logs" / "slurm-tables.out"  # the last job's output: "wrote .../TABLES.md"
    while not (done.exists() and "wrote" in done.read_text()):
        assert time.time() < deadline, subprocess.run(["squeue"], env=slurm, capture_output=True,
                                                      text=True).stdout
        time.sleep(1)
    rows = _ours((out / "TABLES.md").read_text())
    assert rows == _ours((tmp_path / "local" / "TABLES.md").read_text())
    assert sum("no result yet" not in " ".join(r) for r in rows) >= 2  # both rows filled
    # every run finished: submitting again finds nothing left to run
    again = subprocess.run(run_all + ["--slurm", "--out-dir", str(out)], env=slurm,
                           capture_output=True, text=True)
    assert "0 runs to do, 2 finished" in again.stdout, again.stdout
