"""run_all.sh: the command list, --only, and skipping runs whose results exist (no training)."""
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT

# run_all.sh calls `python` (this interpreter, with torch) to list the tables' rows
ENV = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}


def _dry_run(*args):
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--dry-run", *args],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    return [l for l in r.stdout.splitlines() if l.startswith("python ")]


def test_dry_run_lists_every_table_and_only_selects_one(tmp_path):
    every = _dry_run("--out-dir", str(tmp_path))
    scripts = {c.split()[1] for c in every}
    assert scripts == {"sab.py", "indrnn.py", "rlstm.py"}
    ptb = _dry_run("--only", "indrnn-ptb", "--out-dir", str(tmp_path))
    assert ptb == [c for c in every if " indrnn.py --task ptb " in f" {c} "]
    assert len(ptb) == 2 and all("--tag T" in c and "-s0 " in c for c in ptb)
    assert len(_dry_run("--only", "indrnn-ptb", "--seeds", "3", "--out-dir", str(tmp_path))) == 6


def test_runs_with_results_are_skipped(tmp_path):
    quick = _dry_run("--quick", "--only", "indrnn-ptb", "--out-dir", str(tmp_path))
    assert len(quick) == 2 and all("--quick" in c and "-quick-s0" in c for c in quick)
    (tmp_path / "indrnn-ptb-indrnn-T50-quick-s0.json").write_text("{}")
    left = _dry_run("--quick", "--only", "indrnn-ptb", "--out-dir", str(tmp_path))
    assert left == [c for c in quick if "res-indrnn" in c]


def test_bad_arguments_are_refused():
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--only", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such table" in r.stderr
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--seeds", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_transfer_runs_are_skipped_by_their_test_length(tmp_path):
    every = _dry_run("--quick", "--only", "sab-transfer", "--out-dir", str(tmp_path))
    (tmp_path / "sab-copy-sab-T100-quick-s0-test20.json").write_text("{}")
    left = _dry_run("--quick", "--only", "sab-transfer", "--out-dir", str(tmp_path))
    assert len(every) == 25 and len(left) == 24  # SAB with seeds 0, 1 and 2, LSTM and attn seed 0
    assert not any(" sab.py --task copy --model sab " in f" {c} " and "-quick-s0 " in c
                   and c.endswith("--test-seq-len 20") for c in left)


def test_estimate_times_every_training_run_at_paper_settings(tmp_path):
    paper = _dry_run("--out-dir", str(tmp_path))
    est = _dry_run("--estimate", "--seeds", "3", "--out-dir", str(tmp_path))
    training = [c for c in paper if "--eval-only" not in c and "--seed 0 " in c]  # one seed
    assert len(est) == len(training) and len(training) < len(paper)  # no transfer runs
    for p, e in zip(training, est):  # the paper's command, one seed, a short budget, tiny eval
        assert e == p.replace("-s0 ", "-est-s0 ") + " --time-budget 0.5 --eval-size 1 --test-size 1"
    quick = _dry_run("--quick", "--out-dir", str(tmp_path))
    quick_est = _dry_run("--estimate", "--quick", "--out-dir", str(tmp_path))
    assert len(quick_est) == len([c for c in quick if "--eval-only" not in c and "--seed 0 " in c])
    assert all("-quick-est-s0 " in c and c.endswith(" --time-budget 0.5 --eval-size 1 --test-size 1")
               for c in quick_est)
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--estimate", "--cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "excludes" in r.stderr


def test_gpu_path_uses_amp_checkpointing_and_one_gpu_per_run(tmp_path):
    """With two (fake) GPUs visible: --amp everywhere, --grad-checkpoint on the full-BPTT runs
    marked for it, and runs spread over CUDA_VISIBLE_DEVICES 0 and 1 (a fake python records them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: H100'\necho 'GPU 1: H100'\n")
    (bin_dir / "python").write_text(  # records the runs; lists the rows with the real python
        f'#!/bin/sh\n[ "$*" = "tools/tables.py runs" ] && exec {sys.executable} "$@"\n'
        f'case "$*" in *indrnn.py*) sleep 0.5;; esac; echo "$CUDA_VISIBLE_DEVICES $*" >> {tmp_path}/calls\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in ENV.items() if k != "CUDA_VISIBLE_DEVICES"}  # conftest hides GPUs
    env["PATH"] = f"{bin_dir}:{ENV['PATH']}"
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--dry-run", "--out-dir",
                        str(tmp_path / "r")], capture_output=True, text=True, env=env)
    cmds = [l for l in r.stdout.splitlines() if l.startswith("python ")]
    assert cmds and all(" --amp" in c for c in cmds)
    ckpt = [c for c in cmds if "--grad-checkpoint" in c]
    assert any(" rlstm.py " in c and "-full-s0" in c for c in ckpt)
    assert not any(" rlstm.py " in c and "-trunc300-s0" in c for c in ckpt)
    assert not any("--task copy" in c for c in ckpt)
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--only", "indrnn-mnist",
                        "--out-dir", str(tmp_path / "r")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    runs = [c for c in calls if "indrnn.py" in c]
    assert len(runs) == 4 and all("--amp --grad-checkpoint" in c for c in runs)
    assert sorted(c.split()[0] for c in runs) == ["0", "0", "1", "1"]
    assert calls[-1].split()[-2:] == ["table", str(tmp_path / "r")]  # then the tables
    # CUDA_VISIBLE_DEVICES, when set, chooses the GPUs: "3,5" spreads the runs over those two,
    # an empty one means no GPU (the CPU commands, without --amp)
    (tmp_path / "calls").unlink()
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--only", "indrnn-mnist",
                        "--out-dir", str(tmp_path / "r2")], capture_output=True, text=True,
                       env={**env, "CUDA_VISIBLE_DEVICES": "3,5"})
    runs = [c for c in (tmp_path / "calls").read_text().splitlines() if "indrnn.py" in c]
    assert r.returncode == 0 and sorted(c.split()[0] for c in runs) == ["3", "3", "5", "5"]
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--dry-run", "--out-dir",
                        str(tmp_path / "r3")], capture_output=True, text=True,
                       env={**env, "CUDA_VISIBLE_DEVICES": ""})
    cmds = [l for l in r.stdout.splitlines() if l.startswith("python ")]
    assert cmds and not any("--amp" in c or "--grad-checkpoint" in c for c in cmds)


def _fake_gpus(tmp_path):
    """A fake nvidia-smi with 2 GPUs, and a fake python whose runs record their GPU and how many
    runs were on that GPU when they started, then take 1 s; the environment to use them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: H100'\necho 'GPU 1: H100'\n")
    (bin_dir / "python").write_text(
        f'#!/bin/sh\n[ "$1" = "tools/tables.py" ] && exec {sys.executable} "$@"\n'
        f'mkdir {tmp_path}/busy-$CUDA_VISIBLE_DEVICES-$$\n'
        f'echo "$CUDA_VISIBLE_DEVICES $(ls -d {tmp_path}/busy-$CUDA_VISIBLE_DEVICES-* | wc -l)"'
        f' >> {tmp_path}/calls\nsleep 1; rmdir {tmp_path}/busy-$CUDA_VISIBLE_DEVICES-$$\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in ENV.items() if k != "CUDA_VISIBLE_DEVICES"}
    return {**env, "PATH": f"{bin_dir}:{ENV['PATH']}"}


def test_slots_spread_runs_over_the_gpus_k_per_gpu(tmp_path):
    """--jobs-per-gpu K: K runs at a time on each GPU, never more; --dry-run shows the slots."""
    env = _fake_gpus(tmp_path)
    run_all = ["bash", os.path.join(ROOT, "run_all.sh"), "--only", "indrnn-mnist", "--seeds", "2"]
    for k in (1, 2):
        out = tmp_path / f"r{k}"
        dry = subprocess.run(run_all + ["--jobs-per-gpu", str(k), "--dry-run", "--out-dir",
                                        str(out)], capture_output=True, text=True, env=env)
        slots = [l.split("] ")[1].split(":")[0] for l in dry.stdout.splitlines()
                 if l.startswith("# [indrnn-mnist] slot ")]
        assert slots == [f"slot {i % (2 * k)} (GPU {i % 2})" for i in range(8)], dry.stdout
        r = subprocess.run(run_all + ["--jobs-per-gpu", str(k), "--out-dir", str(out)],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        calls = [c.split() for c in (tmp_path / "calls").read_text().splitlines()]
        (tmp_path / "calls").unlink()
        assert sorted(gpu for gpu, _ in calls) == ["0"] * 4 + ["1"] * 4  # 8 runs, 4 per GPU
        assert max(int(n) for _, n in calls) == k  # K at a time on a GPU, and no more


def test_ctrl_c_stops_every_run_which_saves_its_checkpoint_and_a_rerun_resumes(tmp_path):
    """SIGINT to run_all.sh: each run under way gets one SIGTERM (its checkpoint is written and
    it exits 130), no run is listed as failed, the summary says how to resume, and the same
    command then continues the interrupted runs with --resume."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(  # a run: on SIGTERM writes its checkpoint and exits 130
        f'#!/bin/bash\n[ "$1" = "tools/tables.py" ] && exec {sys.executable} "$@"\n'
        'for a in "$@"; do case $prev in --tag) tag=$a;; --model) model=$a;; esac; prev=$a; done\n'
        'trap \'touch "$OUT_DIR/ckpt/indrnn-mnist-$model-$tag.pt"; '
        'echo TERM >> "$OUT_DIR/signals"; exit 130\' TERM\n'
        'echo "$*" >> "$OUT_DIR/calls"; sleep 30 & wait\n')
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "nproc").write_text("#!/bin/sh\necho 2\n")  # --jobs 2 is allowed on any machine
    (bin_dir / "nproc").chmod(0o755)
    out = tmp_path / "out"
    (out / "ckpt").mkdir(parents=True)
    env = {**ENV, "PATH": f"{bin_dir}:{ENV['PATH']}", "OUT_DIR": str(out)}
    cmd = ["bash", os.path.join(ROOT, "run_all.sh"), "--quick", "--only", "indrnn-mnist",
           "--jobs", "2"]
    sweep = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len((out / "calls").read_text().splitlines()
                                         if (out / "calls").exists() else []) < 2:
        time.sleep(0.2)
    os.killpg(sweep.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
    stdout, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130
    assert (out / "signals").read_text().split() == ["TERM", "TERM"]  # one each, two runs
    assert len(list((out / "ckpt").glob("*.pt"))) == 2 and "FAILED" not in stdout
    assert "2 runs saved their checkpoints; the same command resumes them" in stdout
    dry = [l for l in subprocess.run(cmd + ["--dry-run"], env=env, capture_output=True,
                                     text=True).stdout.splitlines() if l.startswith("python ")]
    assert len(dry) == 4 and len([c for c in dry if c.endswith(" --resume")]) == 2


def test_cpu_tier_runs_indrnn_fig2_until_the_target_and_baselines_as_many_steps(tmp_path):
    cmds = _dry_run("--cpu", "--only", "indrnn-adding", "--out-dir", str(tmp_path))
    assert len(cmds) == 12 and all("--threads 1 --seq-len" in c and "-cpu-s0" in c for c in cmds)
    for c in cmds:  # at most 3 hours each (one budget: the row's); no estimate of steps
        assert c.count("--time-budget") == 1 and "--steps 10000000 --time-budget 180 " in c
        assert c.endswith("--stop-at 0.01" if "--model indrnn" in c else "--steps-like indrnn")


def test_cpu_tier_runs_sab_copy_t100_at_paper_settings_and_resumes(tmp_path):
    cmds = [c for c in _dry_run("--cpu", "--out-dir", str(tmp_path)) if "sab.py" in c]
    training = [c for c in cmds if "--eval-only" not in c]
    transfer = [c for c in cmds if "--eval-only" in c]
    assert sorted(c.split("--model ")[1].split()[0] + c.split("--seed ")[1].split()[0]
                  for c in training) == ["attn0", "lstm0", "sab0", "sab1", "sab2", "tbptt0"]
    for c in training:  # the paper's settings: sab.py's copy defaults at T=100, one thread
        assert c.endswith("--threads 1 --seq-len 100 --steps 10000000 --time-budget 150")
        assert "-cpu-s" in c and "--quick" not in c
    assert len(transfer) == 25 and {c.split()[-1] for c in transfer} == {
        "200", "300", "400", "2000", "5000"}
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "sab-copy-sab-T100-cpu-s1.pt").write_text("")  # an interrupted run
    again = _dry_run("--cpu", "--only", "sab-copy", "--out-dir", str(tmp_path))
    assert [c for c in again if "--resume" in c] == [
        c + " --resume" for c in training if "--model sab --tag T100-cpu-s1 " in c]


def test_help_lists_tables_modes_and_environment_and_exits_0():
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0
    for word in ("--quick", "--cpu", "--estimate", "sab-copy", "rlstm-dbpedia", "CPU_MINUTES"):
        assert word in r.stdout
    assert "this machine: " in r.stdout  # the device it would use


def test_without_a_gpu_the_paper_settings_are_refused_unless_asked_for(tmp_path):
    env = {**ENV, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and not (tmp_path / "logs").exists()
    (line,) = r.stderr.splitlines()
    assert all(flag in line for flag in ("--quick", "--cpu", "--yes"))
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--yes", "--dry-run", "--only",
                        "indrnn-ptb", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0 and "# device: no GPU" in r.stdout
    assert len([l for l in r.stdout.splitlines() if l.startswith("python ")]) == 2


def test_dry_run_changes_nothing_on_disk(tmp_path):
    (tmp_path / "failed.txt").write_text("an earlier sweep's failures")
    _dry_run("--quick", "--out-dir", str(tmp_path / "out"))
    _dry_run("--quick", "--out-dir", str(tmp_path))
    assert not (tmp_path / "out").exists() and (tmp_path / "failed.txt").exists()


def test_an_empty_dataset_folder_left_by_a_failed_download_schedules_nothing(tmp_path):
    data = tmp_path / "data"
    (data / "dbpedia").mkdir(parents=True)  # empty, as a failed download leaves it
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--dry-run", "--only",
                        "rlstm-dbpedia", "--data-dir", str(data), "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "skipping rlstm-dbpedia: no data" in r.stdout
    assert not [l for l in r.stdout.splitlines() if l.startswith("python ")]


def test_a_second_estimate_times_every_run_again_and_keeps_the_first_to_compare(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(  # records the runs; lists the rows with the real python
        f'#!/bin/sh\n[ "$1" = "tools/tables.py" ] && exec {sys.executable} "$@"\n'
        f'echo "$*" >> {tmp_path}/calls\n')
    (bin_dir / "python").chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}:{ENV['PATH']}"}
    out = tmp_path / "r"
    (out / "ckpt").mkdir(parents=True)
    (out / "indrnn-ptb-indrnn-T50-est-s0.json").write_text("{}")  # the estimate before
    (out / "ckpt" / "indrnn-ptb-indrnn-T50-est-s0.pt").write_text("")
    (out / "indrnn-ptb-indrnn-T50-s0.json").write_text("{}")  # a real run: stays
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--estimate", "--only",
                        "indrnn-ptb", "--out-dir", str(out)], capture_output=True, text=True,
                       env=env)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len([c for c in calls if "indrnn.py --task ptb" in c]) == 2  # both rows timed again
    assert not any("--resume" in c for c in calls)
    assert (out / "estimate-previous" / "indrnn-ptb-indrnn-T50-est-s0.json").exists()
    assert (out / "indrnn-ptb-indrnn-T50-s0.json").exists()
    assert not list((out / "ckpt").glob("*est*"))
    assert "estimate-previous" not in r.stderr


def test_a_sweep_lists_as_failed_only_its_own_runs_that_failed(tmp_path):
    """An interrupted sweep's runs end (exit 130: checkpoint written) while the next sweep runs;
    that sweep, whose runs all finish, lists no failure. A run that fails is listed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(  # the runs: exit with $EXIT after $SLEEP s, results on 0
        f'#!/bin/sh\n[ "$1" = "tools/tables.py" ] && exec {sys.executable} "$@"\n'
        'sleep "$SLEEP"\n'
        'if [ "$EXIT" = 0 ]; then for a in "$@"; do case $prev in --tag) tag=$a;; '
        '--model) model=$a;; esac; prev=$a; done\n'
        'echo "{\\"script\\": \\"indrnn.py\\", \\"config\\": {\\"task\\": \\"ptb\\", '
        '\\"model\\": \\"$model\\", \\"tag\\": \\"$tag\\", \\"quick\\": true}, '
        '\\"metrics\\": {\\"test_bpc\\": 1.0}, \\"wall_seconds\\": 1, \\"hardware\\": '
        '\\"x\\"}" > "$OUT_DIR/indrnn-ptb-$model-$tag.json"; fi\n'
        'exit "$EXIT"\n')
    (bin_dir / "python").chmod(0o755)
    out = tmp_path / "out"
    env = {**ENV, "PATH": f"{bin_dir}:{ENV['PATH']}", "OUT_DIR": str(out)}
    cmd = ["bash", os.path.join(ROOT, "run_all.sh"), "--quick", "--only", "indrnn-ptb"]
    first = subprocess.Popen(cmd, env={**env, "SLEEP": "2", "EXIT": "130"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # its runs are under way when the second sweep starts
    second = subprocess.run(cmd, env={**env, "SLEEP": "4", "EXIT": "0"}, capture_output=True,
                            text=True)
    first.communicate(timeout=60)
    assert second.returncode == 0 and "FAILED" not in second.stdout, second.stdout
    failing = subprocess.run(cmd + ["--seeds", "2"], env={**env, "SLEEP": "0", "EXIT": "1"},
                             capture_output=True, text=True)
    assert failing.stdout.count("FAILED (exit 1") == 2  # seed 1 of both rows; seed 0 is done
