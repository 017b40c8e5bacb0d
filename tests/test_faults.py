"""The fault suite: what a run of each script guarantees after bad input, a crash, Ctrl-C,
divergence, a full disk or a second run of the same name (tasks.Run, the shared run harness).

Every script trains a tiny synthetic task here, a few seconds of CPU per run."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import indrnn
import rlstm
import sab
import tasks
from conftest import ROOT
from test_rlstm import TinyTask

# Tiny runs of each script on a synthetic task. rlstm.py has none: in this process its task is
# replaced by test_rlstm's TinyTask (the fixture below); the tests that start a separate process
# (SIGINT, SIGTERM, kill -9) run it on real MNIST at a tiny size instead (`real_rlstm`).
TINY = {
    "sab.py": ["--task", "copy", "--seq-len", "4", "--hidden-size", "8", "--batch-size", "8",
               "--k-top", "2", "--k-trunc", "3", "--eval-size", "32"],
    "indrnn.py": ["--task", "adding", "--seq-len", "10", "--hidden-size", "8", "--batch-size",
                  "8", "--eval-size", "32"],
    "rlstm.py": ["--task", "dbpedia", "--seq-len", "24", "--batch-size", "8", "--hidden-size",
                 "8", "--embed-size", "8", "--ffn-size", "8", "--aux-hidden", "8", "--aux-len",
                 "6", "--bptt", "8", "--aux-bptt", "8", "--eval-size", "32"],
}
RLSTM_MNIST = ["--task", "mnist", "--batch-size", "8", "--hidden-size", "8", "--embed-size", "8",
               "--ffn-size", "8", "--aux-hidden", "8", "--aux-len", "6", "--bptt", "8",
               "--aux-bptt", "8", "--eval-size", "32", "--test-size", "32",
               "--pretrain-epochs", "0"]  # about 35 steps/s on one core
MAIN = {"sab.py": sab.main, "indrnn.py": indrnn.main, "rlstm.py": rlstm.main}
SCRIPTS = list(TINY)
REAL_MAKE_TASK = rlstm.make_task


@pytest.fixture(autouse=True)
def tiny_rlstm_task(monkeypatch):
    monkeypatch.setattr(rlstm, "make_task", lambda name, seq_len, batch_size, *a, **k:
                        TinyTask(seq_len, batch_size))


@pytest.fixture
def real_rlstm(script, request, monkeypatch):
    """For rlstm.py, the tiny run is on real MNIST, in this process as in a separate one (a
    separate process cannot see the TinyTask patch)."""
    if script == "rlstm.py":
        data = request.getfixturevalue("mnist_data_dir")
        monkeypatch.setattr(rlstm, "make_task", REAL_MAKE_TASK)
        monkeypatch.setitem(TINY, "rlstm.py", RLSTM_MNIST + ["--data-dir", data])


def _argv(script, out, *extra):
    return TINY[script] + ["--out-dir", str(out), "--eval-every", "5", *extra]


def _name(script, out):
    """The last-state checkpoint of the tiny run of `script` under `out`."""
    folder = os.path.join(out, "ckpt")
    return os.path.join(folder, next(f for f in sorted(os.listdir(folder))
                                     if f.endswith(".pt") and not f.endswith("-best.pt")))


def _ck(path):
    return torch.load(path, weights_only=False)


def _finite(ck):
    return all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def _spawn_until_checkpoint(script, out):
    """Starts the tiny run of `script` (60 steps, a checkpoint every step) in a process and
    returns it once its first checkpoint exists (or after 60 s)."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *_argv(
        script, out, "--steps", "60", "--eval-every", "30", "--checkpoint-minutes", "0.0001")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        folder = out / "ckpt"
        if folder.exists() and any(f.endswith(".pt") for f in os.listdir(folder)):
            break
        time.sleep(0.05)
    return proc


def _all_finite(folder):
    for f in os.listdir(folder) if os.path.isdir(folder) else []:
        if f.endswith(".pt"):
            ck = _ck(os.path.join(folder, f))
            assert _finite(ck), f
            assert all(all(torch.tensor(v).isfinite() for v in h.values()
                           if isinstance(v, float)) for h in ck.get("history", [])), f


@pytest.mark.parametrize("script", SCRIPTS)
def test_weights_that_turn_non_finite_on_an_evaluation_step_are_never_saved(script, tmp_path,
                                                                            monkeypatch):
    real = tasks.Run.step_done

    def poisoned(self, loss, **fields):  # the update of step 10, an evaluation step, breaks
        if self.step == 9:                 # the weights
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return real(self, loss, **fields)
    monkeypatch.setattr(tasks.Run, "step_done", poisoned)
    with pytest.raises(SystemExit, match=r"diverged.*checkpoint on disk: .*\.pt \(step 5\)"):
        MAIN[script](_argv(script, tmp_path, "--steps", "20"))
    _all_finite(tmp_path / "ckpt")
    assert _ck(_name(script, tmp_path))["step"] == 5


def test_real_divergence_writes_no_non_finite_checkpoint(tmp_path):
    # IndRNN adding with an absurd learning rate and no clipping (the probe that once saved a
    # step-1 checkpoint with validation MSE inf as best)
    try:
        indrnn.main(_argv("indrnn.py", tmp_path, "--lr", "1e6", "--clip", "0", "--eval-every",
                          "1", "--steps", "30"))
    except SystemExit as e:
        assert "diverged" in str(e.code)
    _all_finite(tmp_path / "ckpt")


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_existing_run_is_refused_without_resume_and_restart_starts_over(script, tmp_path):
    MAIN[script](_argv(script, tmp_path, "--steps", "10"))
    with pytest.raises(SystemExit, match="--resume to continue it, or --restart"):
        MAIN[script](_argv(script, tmp_path, "--steps", "5"))
    assert _ck(_name(script, tmp_path))["step"] == 10, "the existing checkpoint is untouched"
    rec = MAIN[script](_argv(script, tmp_path, "--steps", "5", "--restart"))
    assert rec["steps_done"] == 5 and _ck(_name(script, tmp_path))["step"] == 5


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_second_run_of_the_same_name_is_refused_and_a_stale_lock_is_taken(script, tmp_path):
    (tmp_path / "ckpt").mkdir()
    argv = _argv(script, tmp_path, "--steps", "5", "--tag", "locked")
    lock = tmp_path / "ckpt" / f"{script[:-3]}-{TINY[script][1]}-{script[:-3]}-locked.lock"
    holder = subprocess.Popen(  # a live process holds the run name
        [sys.executable, "-c", f"import fcntl, time; f = open({str(lock)!r}, 'a'); "
                               f"fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); "
                               f"time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        with pytest.raises(SystemExit, match="already running"):
            MAIN[script](argv)
    finally:
        holder.kill()
        holder.wait()
    assert lock.exists()  # left behind by the killed holder: stale, taken over
    rec = MAIN[script](argv)
    assert rec["steps_done"] == 5 and not lock.exists(), "released at the end"


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_refuses_changed_model_flags_and_accepts_more_steps(script, tmp_path):
    MAIN[script](_argv(script, tmp_path, "--steps", "5"))
    # without --tag, other model flags are another run name: nothing of this run to resume
    with pytest.raises(SystemExit, match="no checkpoint .* to resume from"):
        MAIN[script](_argv(script, tmp_path, "--steps", "10", "--resume", "--lr", "0.5"))
    # with one --tag for both, --resume compares the flags
    MAIN[script](_argv(script, tmp_path, "--steps", "5", "--tag", "mine"))
    with pytest.raises(SystemExit, match=r"--lr 0.5 \(checkpoint: "):
        MAIN[script](_argv(script, tmp_path, "--steps", "10", "--resume", "--lr", "0.5",
                           "--tag", "mine"))
    with pytest.raises(SystemExit, match=r"--batch-size 4 \(checkpoint: 8\)"):
        MAIN[script](_argv(script, tmp_path, "--steps", "10", "--resume", "--batch-size", "4",
                           "--tag", "mine"))
    rec = MAIN[script](_argv(script, tmp_path, "--steps", "10", "--resume"))
    assert rec["steps_done"] == 10 and rec["config"]["steps"] == 10


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_a_broken_checkpoint_gives_a_one_line_error(script, tmp_path, content):
    MAIN[script](_argv(script, tmp_path, "--steps", "5"))
    path = _name(script, tmp_path)
    if content is None:  # truncated mid-file
        data = open(path, "rb").read()
        content = data[:len(data) // 2]
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(SystemExit, match="cannot read checkpoint .* delete it or use --restart"):
        MAIN[script](_argv(script, tmp_path, "--steps", "10", "--resume"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_foreign_or_mismatched_checkpoint_gives_a_one_line_error(script, tmp_path):
    MAIN[script](_argv(script, tmp_path, "--steps", "5"))
    last = _name(script, tmp_path)
    best = last[:-3] + "-best.pt"
    good = _ck(last)
    torch.save({"weights": torch.zeros(3)}, last)  # a torch file, but not a checkpoint
    with pytest.raises(SystemExit, match="is not a checkpoint of .*delete it or use --restart"):
        MAIN[script](_argv(script, tmp_path, "--steps", "10", "--resume"))
    torch.save(dict(good, model={k: v[:1] for k, v in good["model"].items()}), last)
    with pytest.raises(SystemExit, match="does not fit this model \\(size mismatch for "):
        MAIN[script](_argv(script, tmp_path, "--steps", "10", "--resume"))
    torch.save(good, last)
    with open(best, "wb") as f:
        f.write(b"")
    with pytest.raises(SystemExit, match="cannot read checkpoint .*-best.pt"):
        MAIN[script](_argv(script, tmp_path, "--eval-only"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_unwritable_out_dir_is_found_before_training(script, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="--out-dir .* is not writable"):
        MAIN[script](_argv(script, blocker / "out", "--steps", "5"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_sigint_checkpoints_the_current_step_and_resume_is_bit_identical(script, tmp_path,
                                                                          real_rlstm):
    full = MAIN[script](_argv(script, tmp_path / "full", "--steps", "60", "--eval-every", "30"))
    # checkpoint every step (0.001 min), interrupt once a checkpoint beyond step 0 exists
    out = tmp_path / "cut"
    proc = _spawn_until_checkpoint(script, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast)")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "to continue: python " + script in err, err
    assert "--resume" in err.splitlines()[-1]
    stopped = _ck(_name(script, out))["step"]
    assert 0 < stopped < 60
    resumed = MAIN[script](_argv(script, out, "--steps", "60", "--eval-every", "30",
                                 "--resume"))
    assert resumed["metrics"] == full["metrics"]
    a, b = _ck(_name(script, tmp_path / "full")), _ck(_name(script, out))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "bit-identical"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_timer_and_sigterm_write_checkpoints_between_evaluations(script, tmp_path,
                                                                     real_rlstm):
    """No evaluation ever comes (--eval-every 10^6), so the first checkpoint on disk was written
    by the --checkpoint-minutes timer; SIGTERM then writes one of the current step."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *TINY[script],
                             "--out-dir", str(out), "--steps", "1000000", "--eval-every",
                             "1000000", "--checkpoint-minutes", "0.001"],  # every 0.06 s
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def files():
        return os.listdir(out / "ckpt") if (out / "ckpt").exists() else []
    deadline = time.time() + 60
    while not any(f.endswith(".pt") for f in files()):
        assert time.time() < deadline and proc.poll() is None, "no timed checkpoint"
        time.sleep(0.05)
    assert _ck(_name(script, out))["step"] > 0 and not any(f.endswith("-best.pt")
                                                          for f in files())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    step = int(re.search(r"SIGTERM: checkpoint of step (\d+) written", err).group(1))
    assert step > 0 and _ck(_name(script, out))["step"] == step
    assert not any(f.endswith("-best.pt") or f.endswith(".lock") for f in files())


@pytest.mark.parametrize("script", SCRIPTS)
def test_kill_9_loses_at_most_the_checkpoint_interval_and_resume_is_bit_identical(script,
                                                                                   tmp_path,
                                                                                   real_rlstm):
    full = MAIN[script](_argv(script, tmp_path / "full", "--steps", "60", "--eval-every", "30"))
    out = tmp_path / "cut"
    proc = _spawn_until_checkpoint(script, out)
    time.sleep(random.Random().uniform(0, 0.5))  # a random moment, maybe inside a write
    proc.kill()
    proc.communicate()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before the kill (machine too fast)")
    if not any(f.endswith(".pt") and not f.endswith("-best.pt")
               for f in os.listdir(out / "ckpt")):
        pytest.skip("killed before the first checkpoint")
    resumed = MAIN[script](_argv(script, out, "--steps", "60", "--eval-every", "30",
                                 "--resume"))
    assert resumed["metrics"] == full["metrics"]


def test_resume_of_a_carried_state_run_is_bit_identical(tmp_path, ptb_data_dir):
    # IndRNN language modelling carries the hidden state across batches: it is in the checkpoint
    argv = ["--task", "ptb", "--seq-len", "20", "--hidden-size", "16", "--layers", "2",
            "--batch-size", "8", "--eval-size", "4", "--test-size", "4", "--eval-every", "4",
            "--data-dir", ptb_data_dir]
    full = indrnn.main(argv + ["--out-dir", str(tmp_path / "a"), "--steps", "12"])
    indrnn.main(argv + ["--out-dir", str(tmp_path / "b"), "--steps", "6"])
    resumed = indrnn.main(argv + ["--out-dir", str(tmp_path / "b"), "--steps", "12",
                                  "--resume"])
    assert resumed["metrics"] == full["metrics"]


@pytest.mark.parametrize("script,args,message", [
    ("sab.py", ["--task", "ptb", "--test-seq-len", "50"], "--test-seq-len: only copy and adding"),
    ("indrnn.py", ["--task", "mnist", "--test-seq-len", "50"], "--test-seq-len: only adding"),
    ("rlstm.py", ["--task", "mnist", "--test-seq-len", "50"], "--test-seq-len: the tasks of"),
    ("sab.py", ["--clip", "-1"], "argument --clip: must be a number in [0, 1e+06], got -1"),
    ("indrnn.py", ["--clip-value", "-1"], "argument --clip-value: must be a number in [0"),
    ("indrnn.py", ["--weight-decay=-1e-4"], "argument --weight-decay: must be a number in"),
    ("indrnn.py", ["--mag", "inf"], "argument --mag: must be a number in (0, 1e+06], got inf"),
    ("rlstm.py", ["--pretrain-epochs", "nan"], "argument --pretrain-epochs: must be a number"),
    ("sab.py", ["--seed", str(2**63)], "argument --seed: must be a non-negative integer"),
    ("sab.py", ["--lr", "1e39"], "argument --lr: must be a number in (0, 1e+06], got 1e39"),
    ("sab.py", ["--task", "adding", "--seq-len", "1"], "--seq-len 1: adding needs T >= 2"),
    ("indrnn.py", ["--task", "adding", "--seq-len", "1"], "--seq-len 1: adding needs T >= 2"),
    ("sab.py", ["--task", "adding", "--test-seq-len", "1"], "--test-seq-len 1: adding needs T"),
    ("indrnn.py", ["--task", "adding", "--test-seq-len", "1"], "--test-seq-len 1: adding needs"),
    ("indrnn.py", ["--task", "adding", "--bn", "frame", "--test-seq-len", "50"],
     "--test-seq-len: frame-wise batch norm (--bn frame)"),
    ("sab.py", ["--data-dir", "/etc/hostname"], "--data-dir /etc/hostname is a file"),
    ("indrnn.py", ["--data-dir", "/etc/hostname"], "--data-dir /etc/hostname is a file"),
    ("rlstm.py", ["--data-dir", "/etc/hostname"], "--data-dir /etc/hostname is a file"),
    ("rlstm.py", ["--pretrain-epochs", "inf"], "argument --pretrain-epochs: must be a number"),
    ("rlstm.py", ["--task", "stanford_dogs", "--seq-len", "1000"], "needs a square"),
])
def test_flags_without_effect_or_out_of_range_are_refused_in_one_line(script, args, message,
                                                                       tmp_path, cli):
    code, err = cli(script, *args, "--out-dir", str(tmp_path))
    assert code == 2 and message in err, err
    assert not os.listdir(tmp_path), "nothing written"


def test_eval_only_needs_a_trained_run(tmp_path):
    with pytest.raises(SystemExit, match="--eval-only: no best checkpoint"):
        sab.main(_argv("sab.py", tmp_path, "--eval-only"))


def test_save_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    sab.main(_argv("sab.py", tmp_path, "--steps", "5"))
    before = _ck(_name("sab.py", tmp_path))["step"]

    def full_disk(obj, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit, match="No space left on device.* on disk: .*step 5"):
        sab.main(_argv("sab.py", tmp_path, "--steps", "10", "--resume"))
    monkeypatch.undo()
    assert _ck(_name("sab.py", tmp_path))["step"] == before
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path / "ckpt"))


def test_a_full_disk_at_the_results_file_keeps_the_run_and_eval_only_writes_it(tmp_path,
                                                                              monkeypatch):
    def full_disk(path, record):
        with open(path + ".tmp", "w") as f:
            f.write("partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tasks, "write_results", full_disk)
    with pytest.raises(SystemExit, match="No space left on device.*--eval-only writes it"):
        sab.main(_argv("sab.py", tmp_path, "--steps", "5"))
    monkeypatch.undo()
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".json", ".tmp"))]
    record = sab.main(_argv("sab.py", tmp_path, "--steps", "5", "--eval-only"))
    assert record["best_step"] == 5
    assert (tmp_path / f"sab-copy-sab-{record['config']['tag']}.json").exists()


def _overcommit_always():
    """Linux with vm.overcommit_memory = 1 grants any allocation and kills the process when it
    touches the pages: an allocation too large for the machine then cannot fail."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


needs_refusing_allocator = pytest.mark.skipif(
    _overcommit_always(), reason="vm.overcommit_memory = 1: no allocation is refused")


@needs_refusing_allocator
def test_a_model_too_large_to_allocate_is_a_one_line_error(tmp_path):
    # 1e9 hidden units: SAB's first weight alone would need 160 GB, refused by the allocator
    argv = ["--task", "copy", "--hidden-size", str(10**9), "--out-dir", str(tmp_path)]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sab.py"), *argv], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: the model does not fit in memory with --hidden-size 1000000000" in r.stderr


@needs_refusing_allocator
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_batch_too_large_to_allocate_is_a_one_line_error(script, tmp_path, real_rlstm):
    # the model fits; the first batch of 2^31 - 1 sequences does not (synthetic tasks), or is
    # larger than the training set (rlstm.py on MNIST: it would silently be the whole set)
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), *TINY[script], "--batch-size",
                        str(2**31 - 1), "--out-dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    expected = ("--batch-size 2147483647 is larger than the training set" if script == "rlstm.py"
                else "error: the model does not fit in memory")  # (checked before allocating)
    assert expected in r.stderr and "--batch-size" in r.stderr.splitlines()[-1], r.stderr


# The faults a fault-injection campaign found, one test each.

@pytest.mark.parametrize("mode", ["train", "eval-only"])
def test_a_full_disk_when_the_lock_is_created_is_a_one_line_error(mode, tmp_path, monkeypatch):
    sab.main(_argv("sab.py", tmp_path, "--steps", "5"))
    real = open

    def full_disk(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)
    monkeypatch.setattr(tasks, "open", full_disk, raising=False)
    extra = ["--steps", "10", "--resume"] if mode == "train" else ["--eval-only"]
    with pytest.raises(SystemExit, match=r"^error: --out-dir .* is not writable \(No space left"):
        sab.main(_argv("sab.py", tmp_path, *extra))


def test_a_model_too_large_is_refused_before_anything_is_allocated(tmp_path):
    """2^31 - 1 hidden units: IndRNN's input weights alone are 17 GB (once allocated and filled
    with no message, where an allocator grants them), its recurrent ones 2^62 bytes. The one-line
    error comes before any of it: the process never holds more than torch itself."""
    import resource
    r = subprocess.run([sys.executable, os.path.join(ROOT, "indrnn.py"), "--task", "adding",
                        "--hidden-size", str(2**31 - 1), "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "error: the model does not fit in memory with --hidden-size 2147483647" in r.stderr
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 3 * 2**20  # KiB: < 3 GiB


def test_a_finished_result_is_never_overwritten_without_restart(tmp_path):
    first = sab.main(_argv("sab.py", tmp_path, "--steps", "5"))
    for f in (tmp_path / "ckpt").iterdir():  # its checkpoints removed, the results file kept
        f.unlink()
    (tmp_path / "ckpt").rmdir()
    path = tmp_path / f"sab-copy-sab-{first['config']['tag']}.json"
    before = path.read_text()
    with pytest.raises(SystemExit, match=r"exists \(.*\.json\): add --resume .* or --restart"):
        sab.main(_argv("sab.py", tmp_path, "--steps", "10"))
    assert path.read_text() == before
    assert sab.main(_argv("sab.py", tmp_path, "--steps", "10", "--restart"))["steps_done"] == 10


def test_a_resumed_run_has_the_history_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """The history's means over the steps since the last evaluation (SAB's gradient norms) come
    from the checkpoint too: a run stopped between evaluations records the same history."""
    argv = ["--steps", "20", "--eval-every", "10", "--checkpoint-minutes", "0.000001"]
    full = sab.main(_argv("sab.py", tmp_path / "full", *argv))
    real = tasks.SyntheticTask.train_batch

    def dies_at_step_14(self, step):  # after the timer's checkpoint of step 13
        if step == 13:
            raise KeyboardInterrupt
        return real(self, step)
    monkeypatch.setattr(tasks.SyntheticTask, "train_batch", dies_at_step_14)
    with pytest.raises(KeyboardInterrupt):
        sab.main(_argv("sab.py", tmp_path / "cut", *argv))
    monkeypatch.setattr(tasks.SyntheticTask, "train_batch", real)
    assert _ck(_name("sab.py", tmp_path / "cut"))["step"] == 13
    resumed = sab.main(_argv("sab.py", tmp_path / "cut", *argv, "--resume"))
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert strip(resumed["history"]) == strip(full["history"])
    assert resumed["history"][1]["grad_norm"] == full["history"][1]["grad_norm"]
