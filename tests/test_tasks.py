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
    def offline(url, dest):
        raise OSError("network unreachable")
    monkeypatch.setattr(tasks, "download", offline)
    with pytest.raises(tasks.DataError, match="ptb.char.train.txt"):
        tasks.make_task("ptb", seq_len=20, data_dir=str(tmp_path))


def test_results_table_formats_records():
    rec = dict(script="sab.py", config=dict(task="copy", model="sab", seq_len=100,
                                            test_seq_len=None),
               metric="test_acc", paper="100", metrics=dict(test_acc=97.25),
               command="python sab.py", hardware="cpu", wall_seconds=120.0, steps_done=300)
    table = tasks.format_table([rec])
    assert "| 100 | 97.25 | `python sab.py` | cpu | 2.0 min | 300 |" in table


def test_text8_download_is_unzipped_and_checked(tmp_path, monkeypatch):
    import hashlib
    import zipfile
    content = b"anarchism originated as a term of abuse"

    def fake_download(url, dest):  # stands in for the network: a zip holding `text8`
        assert url == tasks.TEXT8_URL
        with zipfile.ZipFile(dest, "w") as z:
            z.writestr("text8", content)
    monkeypatch.setattr(tasks, "download", fake_download)
    monkeypatch.setattr(tasks, "TEXT8_SHA256", hashlib.sha256(content).hexdigest())
    path = tasks.ensure_text8(str(tmp_path))
    assert open(path, "rb").read() == content
    monkeypatch.setattr(tasks, "TEXT8_SHA256", "0" * 64)
    with pytest.raises(tasks.DataError, match="checksum"):
        tasks.ensure_text8(str(tmp_path))


def _record(script, task, model, tag, metric, value, quick=False, seed=0, seq_len=100,
            test_seq_len=None, test_size=None):
    return {"script": script, "metrics": {metric: value}, "wall_seconds": 120.0,
            "hardware": "CPU X", "config": {"task": task, "model": model, "quick": quick,
                                            "seed": seed, "tag": tag, "seq_len": seq_len,
                                            "test_seq_len": test_seq_len, "test_size": test_size}}


def test_paper_tables_put_each_result_in_its_row_and_flag_missing_rows():
    assert tasks.row_tag("T100-quick-s2") == "T100" and tasks.row_tag("T20-cs-s0") == "T20-cs"
    records = [
        _record("sab.py", "copy", "sab", "T200-s0", "test_acc", 50.0),
        _record("sab.py", "copy", "sab", "T200-s1", "test_acc", 60.0, seed=1),
        _record("sab.py", "copy", "sab", "T200-quick-s0", "test_acc", 33.0, quick=True,
                seq_len=20),
        _record("sab.py", "copy", "sab", "T100-s0", "test_acc", 70.0, test_seq_len=400),
        _record("sab.py", "copy", "lstm", "T100-quick-s0", "test_acc", 9.0, quick=True,
                seq_len=10, test_seq_len=20),
        _record("indrnn.py", "adding", "lstm", "T1000-s0", "test_mse", 0.17),
        _record("sab.py", "pmnist", "sab", "T784-quick-s0", "test_acc", 12.0, quick=True,
                seq_len=784, test_size=1000),
    ]
    text = tasks.paper_tables(records)
    lines = text.splitlines()
    sab = [l for l in lines if l.startswith("| SAB (k_trunc 5, k_top 5), T=200 |")]
    assert sab == ["| SAB (k_trunc 5, k_top 5), T=200 | UNCONFIRMED | 55.00 ± 7.07 (range 50.00 – 60.00) | 2 | "
                   "paper settings | CPU X | 2.0 min |",
                   "| SAB (k_trunc 5, k_top 5), T=200 | UNCONFIRMED | 33.00 | 1 | "
                   "CPU-scale (--quick, T=20) | CPU X | 2.0 min |"]
    assert "| SAB (k_trunc 5, k_top 5), T=100 | 100 (k_trunc 5, k_top 5) | no result yet | 0 | | | |" in lines
    assert any(l.startswith("| SAB (k_trunc 5, k_top 5), trained T=100, tested T=400 | "
                            "UNCONFIRMED | 70.00 | 1 |") for l in lines)
    assert any(l.startswith("| LSTM (full BPTT), trained T=100, tested T=200 | UNCONFIRMED | "
                            "9.00 | 1 | CPU-scale (--quick, T=10) |") for l in lines)
    assert "| lstm, T=1000 | fails from T=1000 on (Fig. 2; figure only) | 0.1700 | 1 | paper settings | CPU X | 2.0 min |" in lines
    assert "| lstm, T=100 | fails from T=1000 on (Fig. 2; figure only) | no result yet | 0 | | | |" in lines
    assert ("| SAB (k_trunc 10, k_top 10), pmnist | UNCONFIRMED | 12.00 | 1 | CPU-scale (--quick, "
            "T=784), test on first 1000 | CPU X | 2.0 min |") in lines
    for name in tasks.paper_table_defs():
        assert f"`bash run_all.sh --only {name}`" in text


def test_estimate_runs_stay_out_of_the_results_and_give_hours_per_table():
    def timed(model, tag, seconds, steps_done, steps):
        rec = _record("indrnn.py", "adding", model, tag, "test_mse", 0.1)
        rec.update(wall_seconds=seconds, steps_done=steps_done)
        rec["config"]["steps"] = steps
        return rec
    records = [timed("indrnn", "T100-est-s0", 30.0, 100, 60_000),    # 0.3 s/step -> 5 h
               timed("lstm", "T5000-est-s0", 36.0, 10, 1_000),       # 3.6 s/step -> 1 h
               _record("indrnn.py", "adding", "lstm", "T1000-s0", "test_mse", 0.17)]
    assert tasks.is_estimate(records[0]) and not tasks.is_estimate(records[2])
    lines = tasks.paper_tables(records).splitlines()
    assert "| indrnn, T=100 | converges at T=100..5000 (Fig. 2; figure only) | no result yet | 0 | | | |" in lines
    assert "| lstm, T=1000 | fails from T=1000 on (Fig. 2; figure only) | 0.1700 | 1 | paper settings | CPU X | 2.0 min |" in lines
    est = tasks.time_estimates(records).splitlines()
    assert ("| indrnn-adding | 2 of 12 | 6.0 | indrnn, T=100 (5.0 h) | CPU X | "
            "not timed before |") in est
    assert "| sab-transfer | evaluation only | | | | |" in est
    assert "| indrnn-mnist | 0 of 4 | not timed | | | |" in est
    assert tasks.time_estimates(records[2:]) == ""
    # against the estimate before: each table's and the total's ratio of now to then
    before = [timed("indrnn", "T100-est-s0", 60.0, 100, 60_000),    # 10 h
              timed("lstm", "T5000-est-s0", 72.0, 10, 1_000)]      # 2 h
    est = tasks.time_estimates(records, before).splitlines()
    assert ("| indrnn-adding | 2 of 12 | 6.0 | indrnn, T=100 (5.0 h) | CPU X | "
            "0.50x (then 12.0 h) |") in est
    assert "| all tables timed both times | | 6.0 | | | 0.50x (then 12.0 h) |" in est


def test_table_command_writes_tables_md(tmp_path):
    rec = _record("indrnn.py", "mnist", "indrnn", "T784-s0", "test_acc", 97.5)
    (tmp_path / "indrnn-mnist-indrnn-T784-s0.json").write_text(json.dumps(rec))
    (tmp_path / "logs").mkdir()  # a run that finished, and one that failed (no results file)
    (tmp_path / "logs" / "indrnn-mnist-indrnn-T784-s0.log").write_text("done\n")
    (tmp_path / "logs" / "indrnn-pmnist-res-indrnn-T784-quick-s0.log").write_text(
        "== header\nerror: MNIST is missing from x (no network)\n")
    assert tasks.failed_runs(str(tmp_path)) == {
        "indrnn-pmnist-res-indrnn-T784-quick-s0": "error: MNIST is missing from x"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tasks.py"), "table", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "TABLES.md").read_text()
    assert "| indrnn, mnist | 99.0 (6 layers; 1.0% error) | 97.50 | 1 | paper settings | CPU X | 2.0 min |" in text
    assert ("| res-indrnn, pmnist | 97.02 (12 layers; 2.98% error) | no result yet: the run failed (error: MNIST "
            "is missing from x) | 0 | | | |") in text
    assert "| indrnn, pmnist | 96.0 (6 layers; 4.0% error) | no result yet | 0 | | | |" in text


def test_seeds_table_gives_every_run_and_mean_std_range():
    def rec(seed, threads, acc):
        return dict(config=dict(seed=seed, threads=threads), metric="test_acc",
                    metrics=dict(test_acc=acc), best_step=10, steps_done=20, wall_seconds=60,
                    hardware="CPU X")
    table = tasks.seeds_table([rec(1, 2, 40.0), rec(0, 1, 100.0), rec(1, 1, 70.0)])
    lines = table.splitlines()
    assert [l.split("|")[1:5] for l in lines[2:5]] == [
        [" 0 ", " 1 ", " test_acc ", " 100.00 "], [" 1 ", " 1 ", " test_acc ", " 70.00 "],
        [" 1 ", " 2 ", " test_acc ", " 40.00 "]]
    assert lines[-1] == "3 runs: **70.00 ± 30.00** (mean ± std), range 40.00 – 100.00."
    assert tasks.mean_std_range([5.0]) == (5.0, 0.0, 5.0, 5.0)
    # MSE and BPC get four decimals, as in the other tables (0.02 and 0.16 MSE once looked alike)
    mse = tasks.seeds_table([{**rec(0, 1, 0.0), "metric": "test_mse",
                              "metrics": dict(test_mse=0.02191)}])
    assert "| 0.0219 |" in mse and "**0.0219 ± 0.0000**" in mse


def test_cpu_tier_runs_get_their_own_line_with_their_budget():
    cpu = [_record("sab.py", "copy", "sab", f"T100-cpu-s{s}", "test_acc", v, seed=s)
           for s, v in ((0, 90.0), (1, 80.0))]
    for r in cpu:
        r["config"]["time_budget"] = 150.0
    paper = _record("sab.py", "copy", "sab", "T100-s0", "test_acc", 99.0)
    lines = tasks.paper_tables(cpu + [paper]).splitlines()
    rows = [l for l in lines if l.startswith("| SAB (k_trunc 5, k_top 5), T=100 |")]
    assert rows == ["| SAB (k_trunc 5, k_top 5), T=100 | 100 (k_trunc 5, k_top 5) | 85.00 ± 7.07 (range 80.00 – 90.00) "
                    "| 2 | paper settings on CPU, 150 min of 1 thread | CPU X | 2.0 min |",
                    "| SAB (k_trunc 5, k_top 5), T=100 | 100 (k_trunc 5, k_top 5) | 99.00 | 1 | paper settings | CPU X | "
                    "2.0 min |"]


@pytest.mark.parametrize("name", list(tasks.paper_table_defs()))
def test_every_table_label_names_the_settings_its_flags_give(name):
    """A row's label says k_trunc / k_top / T / layers / truncation: the run's own flags, parsed
    by its script, must give exactly those values."""
    import importlib
    for r in tasks.paper_table_defs()[name][1]:
        module = importlib.import_module(r["script"][:-3])
        for scale in ("args", "quick"):
            argv = ["--task", r["task"], "--model", r["model"]] + r[scale].split()
            argv += ["--quick"] if scale == "quick" else []
            if "--eval-only" in argv:  # parse the training run's flags
                argv = argv[:argv.index("--eval-only")]
            c = vars(module.parse_args(argv))
            label = r["label"]
            for key, pattern in (("k_trunc", r"k_trunc (\d+)"), ("k_top", r"k_top (\d+)")):
                m = re.search(pattern, label)
                if m and r["model"] in ("sab", "tbptt"):
                    assert c[key] == int(m.group(1)), (label, scale, key, c[key])
            m = re.search(r"(?<!tested )T=(\d+)", label)
            if m and scale == "args":
                assert c["seq_len"] == int(m.group(1)), (label, c["seq_len"])
            m = re.search(r"(\d+) layers", label)
            if m and scale == "args":
                assert c["layers"] == int(m.group(1)), (label, c["layers"])
            if "Truncate300" in label or "Full BP" in label:
                assert c["bptt"] == (0 if "Full BP" in label else 300), (label, c["bptt"])


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
def test_help_has_text_for_every_flag_and_no_none_defaults(script, capsys):
    import importlib
    module = importlib.import_module(script)
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "--quick sets" in text and "per task" in text
    parser_lines = [l for l in text.splitlines() if l.startswith("  --")]
    # a flag line without help ends with its metavar: every flag has a description after it
    described = re.findall(r"^  (--[\w-]+)", text, re.M)
    assert len(described) == len(parser_lines) > 20
    for line in parser_lines:
        flag = line.split()[0]
        after = text.split(line, 1)[1].split("\n  --", 1)[0]
        assert len(line.split()) > 2 or after.strip(), f"{script}: {flag} has no help"


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
