"""Task definitions (tasks.py): layouts, targets, seeds, metrics and the real-data loaders."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import tasks
from conftest import ROOT


def test_copy_layout_and_targets():
    T, B = 30, 16
    x, y = tasks.copy_batch(B, T, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (T + 20, B) and x.dtype == torch.long
    digits = x[:10]
    assert ((digits >= 1) & (digits <= 8)).all()
    assert (x[10:T + 9] == 0).all(), "T-1 blanks after the digits"
    assert (x[T + 9] == 9).all(), "the marker"
    assert (x[T + 10:] == 0).all(), "10 blanks after the marker"
    assert (y[:T + 10] == 0).all() and torch.equal(y[T + 10:], digits)


def test_adding_layout_and_targets():
    T, B = 40, 500
    x, y = tasks.adding_batch(B, T, torch.Generator().manual_seed(0))
    assert x.shape == (T, B, 2) and y.shape == (B,)
    values, marker = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert (marker[:T // 2].sum(0) == 1).all() and (marker[T // 2:].sum(0) == 1).all()
    assert torch.allclose(y, (values * marker).sum(0))
    trivial = ((y - 1.0) ** 2).mean().item()  # always predicting 1: variance of U(0,1)+U(0,1)
    assert 0.14 < trivial < 0.19


@pytest.mark.parametrize("name", ["copy", "adding"])
def test_synthetic_seeds(name):
    a = tasks.make_task(name, seq_len=12, batch_size=8, seed=3, eval_size=20)
    b = tasks.make_task(name, seq_len=12, batch_size=8, seed=3, eval_size=20)
    c = tasks.make_task(name, seq_len=12, batch_size=8, seed=4, eval_size=20)
    assert torch.equal(a.train_batch(5)[0], b.train_batch(5)[0]), "same (seed, step), same batch"
    assert not torch.equal(a.train_batch(5)[0], a.train_batch(6)[0]), "fresh samples every step"
    assert not torch.equal(a.train_batch(5)[0], c.train_batch(5)[0])
    first = [x for x, _ in a.eval_batches("test")]
    again = [x for x, _ in c.eval_batches("test")]
    assert all(torch.equal(u, v) for u, v in zip(first, again)), "fixed test set, any seed"
    assert sum(len(x[0]) for x in first) == 20
    valid = [x for x, _ in a.eval_batches("valid")]
    assert not torch.equal(first[0], valid[0])


def test_copy_test_seq_len_changes_only_the_test_set():
    task = tasks.make_task("copy", seq_len=10, batch_size=4, test_seq_len=25, eval_size=4)
    assert next(task.eval_batches("test"))[0].shape[0] == 45
    assert next(task.eval_batches("valid"))[0].shape[0] == 30
    assert task.train_batch(0)[0].shape[0] == 30


def test_copy_metrics():
    T, B = 5, 8
    x, y = tasks.copy_batch(B, T, torch.Generator().manual_seed(1))
    perfect = torch.nn.functional.one_hot(y, 9).float() * 50
    loss, stats = tasks.loss_and_stats("copy", perfect, y)
    m = tasks.summarize("copy", stats, "test")
    assert m["test_acc"] == 100.0 and m["test_ce"] < 1e-6 and loss.item() < 1e-6
    uniform = torch.zeros(T + 20, B, 9)
    m = tasks.summarize("copy", tasks.loss_and_stats("copy", uniform, y)[1], "test")
    assert m["test_ce"] == pytest.approx(math.log(9), rel=1e-5)


def test_lm_metric_is_bits_per_character():
    y = torch.zeros(7, 3, dtype=torch.long)
    out = torch.zeros(7, 3, 4)  # uniform over 4 symbols: exactly 2 bits per character
    m = tasks.summarize("lm", tasks.loss_and_stats("lm", out, y)[1], "valid")
    assert m["valid_bpc"] == pytest.approx(2.0, rel=1e-6)


@pytest.fixture(scope="module")
def mnist_dir(mnist_data_dir, tmp_path_factory):
    """A writable copy of the MNIST files (torchvision extracts the archives next to them)."""
    src = os.path.join(mnist_data_dir, "MNIST")
    dst = tmp_path_factory.mktemp("data")
    shutil.copytree(src, dst / "MNIST")
    return str(dst)


def test_mnist_loader_real_files(mnist_dir):
    task = tasks.make_task("mnist", batch_size=32, data_dir=mnist_dir)
    assert [len(task.data[s][0]) for s in ("train", "valid", "test")] == [57000, 3000, 10000]
    x, y = task.train_batch(0)
    assert x.shape == (784, 32, 1) and y.shape == (32,)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert torch.equal(task.train_batch(0)[0], x)
    # The official test labels: 980 zeros ... 1009 nines (the MNIST test set's class counts).
    counts = torch.bincount(task.data["test"][1], minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # The held-out 5% is disjoint from the training part and the same every time.
    again = tasks.make_task("mnist", batch_size=32, data_dir=mnist_dir)
    assert torch.equal(again.data["valid"][0], task.data["valid"][0])
    tok = tasks.make_task("mnist", batch_size=4, data_dir=mnist_dir, as_tokens=True)
    xt, _ = next(tok.eval_batches("test"))
    assert xt.dtype == torch.long and xt.shape == (784, 4) and xt.max() <= 255


def test_pmnist_is_one_fixed_permutation(mnist_dir):
    plain = tasks.make_task("mnist", batch_size=8, data_dir=mnist_dir)
    perm = tasks.make_task("pmnist", batch_size=8, data_dir=mnist_dir)
    p = torch.randperm(784, generator=torch.Generator().manual_seed(tasks.PMNIST_SEED))
    assert torch.equal(perm.data["test"][0], plain.data["test"][0][:, p])
    assert not torch.equal(perm.data["test"][0], plain.data["test"][0])


def test_mnist_missing_offline_says_what_to_do(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(tasks.DataError, match="train-images-idx3-ubyte.gz"):
        tasks.make_task("mnist", data_dir=str(tmp_path))


@pytest.fixture
def ptb_dir(ptb_data_dir, tmp_path):
    shutil.copytree(os.path.join(ptb_data_dir, "ptb"), tmp_path / "ptb")
    return str(tmp_path)


def test_ptb_loader_real_files(ptb_dir):
    task = tasks.make_task("ptb", seq_len=20, batch_size=4, data_dir=ptb_dir)
    assert task.vocab == 50
    x, y = task.train_batch(0)
    assert x.shape == y.shape == (20, 4)
    assert torch.equal(x[1:], y[:-1]), "targets are the next character"
    text = "".join(task.vocab_list[i] for i in x[:, 0].tolist())
    assert text.startswith("aer_banknote_"), text  # first words of ptb.train.txt
    assert task.windows("valid") > 0 and task.windows("test") > 0


def test_ptb_corrupted_file_is_caught_by_checksum(ptb_dir, tmp_path):
    if not os.path.exists(os.path.join(ptb_dir, "ptb", "ptb.char.valid.txt")):
        pytest.skip("no PTB files")
    bad = tmp_path / "bad"
    shutil.copytree(os.path.join(ptb_dir, "ptb"), bad / "ptb")
    path = bad / "ptb" / "ptb.char.valid.txt"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(tasks.DataError, match="checksum"):
        tasks.make_task("ptb", seq_len=20, batch_size=4, data_dir=str(bad))


def test_ptb_missing_offline_says_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def offline(url, root, filename=None, md5=None, **kw):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    with pytest.raises(tasks.DataError, match="ptb.char.train.txt"):
        tasks.make_task("ptb", seq_len=20, data_dir=str(tmp_path))


def test_a_changed_extracted_mnist_file_is_a_one_line_error(mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "MNIST"
    shutil.copytree(os.path.join(mnist_dir, "MNIST"), folder)
    tasks.make_task("mnist", data_dir=str(tmp_path))  # extracted and checked: fine
    labels = folder / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 10  # one label changed, same size
    labels.write_bytes(bytes(data))
    with pytest.raises(tasks.DataError, match="t10k-labels-idx1-ubyte differs from its verified "
                                              "archive .*: delete it"):
        tasks.make_task("mnist", data_dir=str(tmp_path))
    labels.unlink()  # as the message says: extracted again, and fine
    tasks.make_task("mnist", data_dir=str(tmp_path))
    images = folder / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-784])  # truncated: torchvision cannot read it
    with pytest.raises(tasks.DataError, match="t10k-images-idx3-ubyte differs from its verified "
                                              "archive .*: delete it"):
        tasks.make_task("mnist", data_dir=str(tmp_path))
    images.unlink()
    tasks.make_task("mnist", data_dir=str(tmp_path))
    archive = folder / "raw" / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(tasks.DataError, match="train-images-idx3-ubyte.gz is corrupt"):
        tasks.make_task("mnist", data_dir=str(tmp_path))
    for f in (folder / "raw").iterdir():  # a corrupt archive and nothing extracted, offline
        if not f.name.endswith(".gz"):
            f.unlink()
    import torchvision

    def offline(self):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(tasks.DataError, match="train-images-idx3-ubyte.gz is corrupt"):
        tasks.make_task("mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("script", ["sab", "indrnn", "rlstm"])
def test_help_shows_the_defaults_of_the_run_asked_about_and_each_one_parses(script, capsys):
    """--help of every task, model and --quick: a text for every flag, the defaults that run
    would get, and not one the parser would refuse (each is fed back and gives the same value)."""
    import importlib
    module = importlib.import_module(script)
    for task in module.TASKS:
        for model in module.MODELS:
            for quick in ([], ["--quick"]):
                argv = ["--task", task, "--model", model, *quick]
                with pytest.raises(SystemExit):
                    module.parse_args(argv + ["--help"])
                text = capsys.readouterr().out
                assert "(default: None)" not in text
                assert f"those of --task {task} --model {model}{' --quick' * bool(quick)};" in text
                entries = re.split(r"\n(?=  -)", text.split("options:\n", 1)[1])
                assert len(entries) > 30 and all(len(e.split()) > 2 for e in entries), "help text"
                expected = vars(module.parse_args(argv))
                for entry in entries:
                    shown = re.search(r"\(default: ([^)]*)\)", " ".join(entry.split()))
                    flag = entry.split()[0].rstrip(",")
                    if shown and flag not in ("-h", "--task", "--model"):
                        again = vars(module.parse_args(argv + [flag, shown.group(1)]))
                        key = flag[2:].replace("-", "_")
                        assert again[key] == expected[key], (argv, flag, shown.group(1))


def test_benchmark_times_only_calls_without_the_memory_hook(monkeypatch):
    """The saved-tensor hook that measures memory on CPU costs Python time per saved tensor, so
    the timed calls must run without it."""
    calls = []
    real = torch.autograd.graph.saved_tensors_hooks

    class Spy(real):  # marks the calls made inside the benchmark's memory hook
        def __enter__(self):
            calls.append("hook on")
            return super().__enter__()

        def __exit__(self, *exc):
            calls.append("hook off")
            return super().__exit__(*exc)

    monkeypatch.setattr(torch.autograd.graph, "saved_tensors_hooks", Spy)
    ticks = []
    monkeypatch.setattr(tasks.time, "perf_counter", lambda: ticks.append(len(calls)) or 0.0)
    sec, mem = tasks.benchmark(lambda: calls.append("step"), torch.device("cpu"), repeats=2)
    timed = calls[ticks[0]:ticks[1]]
    assert timed == ["step", "step"], calls
    assert "hook on" in calls[:ticks[0]], "memory is measured before the timing starts"
    calls.clear()
    assert tasks.benchmark(lambda: calls.append("step"), torch.device("cpu"), repeats=1,
                           memory=False)[1] is None
    assert calls == ["step"], "memory=False: the timed call alone"
    calls.clear()
    assert tasks.benchmark(lambda: calls.append("step"), torch.device("cpu"), repeats=0)[0] is None
    assert calls == ["step", "hook on", "step", "hook off"], "repeats=0: warm-up and memory"


def test_device_auto_picks_the_faster_device_for_the_run_and_says_so(monkeypatch, capsys):
    """--device auto on a machine with a GPU times one training step of the run on each device
    (the GPU faked here: the probe's steps sleep) and takes the faster, in one line."""
    import argparse
    import time
    for name, fake in dict(is_available=lambda: True, synchronize=lambda device=None: None,
                           get_rng_state_all=lambda: [], set_rng_state_all=lambda states: None,
                           get_device_name=lambda device=None: "Fake GPU",
                           is_bf16_supported=lambda: True).items():
        monkeypatch.setattr(torch.cuda, name, fake)
    probed = []

    def probe(gpu_ms):
        def make(device, amp_dtype):
            probed.append((device.type, amp_dtype))
            ms = gpu_ms if device.type == "cuda" else 2
            return lambda: time.sleep(ms / 1000)
        return make
    args = argparse.Namespace(threads=1, device="auto", amp="auto", compile=False, seed=0)
    device, amp_dtype, _ = tasks.setup(args, probe(gpu_ms=30))
    out = capsys.readouterr().out
    assert device.type == "cpu" and amp_dtype == torch.bfloat16
    assert out.startswith("== --device auto: cpu, the faster for this run: ") and "Fake GPU" in out
    assert probed == [("cpu", torch.bfloat16), ("cuda", torch.bfloat16)]
    assert tasks.setup(args, probe(gpu_ms=0))[0].type == "cuda"
    probed.clear()  # a device given, or --compile (for CUDA graphs): no probe
    for flag, value, want in (("device", "cpu", "cpu"), ("compile", True, "cuda")):
        given = argparse.Namespace(**{**vars(args), flag: value})
        assert tasks.setup(given, probe(0))[0].type == want
    assert probed == []
