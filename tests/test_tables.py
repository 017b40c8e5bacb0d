"""tools/tables.py: the results tables of finished runs (run_all.sh and the docs)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import tables  # noqa: E402


def test_results_table_formats_records():
    rec = dict(script="sab.py", config=dict(task="copy", model="sab", seq_len=100,
                                            test_seq_len=None),
               metric="test_acc", paper="100", metrics=dict(test_acc=97.25),
               command="python sab.py", hardware="cpu", wall_seconds=120.0, steps_done=300)
    table = tables.format_table([rec])
    assert "| 100 | 97.25 | `python sab.py` | cpu | 2.0 min | 300 |" in table


def _record(script, task, model, tag, metric, value, quick=False, seed=0, seq_len=100,
            test_seq_len=None, test_size=None):
    return {"script": script, "metrics": {metric: value}, "wall_seconds": 120.0,
            "hardware": "CPU X", "config": {"task": task, "model": model, "quick": quick,
                                            "seed": seed, "tag": tag, "seq_len": seq_len,
                                            "test_seq_len": test_seq_len, "test_size": test_size}}


def test_paper_tables_put_each_result_in_its_row_and_flag_missing_rows():
    assert tables.row_tag("T100-quick-s2") == "T100" and tables.row_tag("T20-cs-s0") == "T20-cs"
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
    text = tables.paper_tables(records)
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
    for name in tables.paper_table_defs():
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
    assert tables.is_estimate(records[0]) and not tables.is_estimate(records[2])
    lines = tables.paper_tables(records).splitlines()
    assert "| indrnn, T=100 | converges at T=100..5000 (Fig. 2; figure only) | no result yet | 0 | | | |" in lines
    assert "| lstm, T=1000 | fails from T=1000 on (Fig. 2; figure only) | 0.1700 | 1 | paper settings | CPU X | 2.0 min |" in lines
    est = tables.time_estimates(records).splitlines()
    assert ("| indrnn-adding | 2 of 12 | 6.0 | indrnn, T=100 (5.0 h) | CPU X | "
            "not timed before |") in est
    assert "| sab-transfer | evaluation only | | | | |" in est
    assert "| indrnn-mnist | 0 of 4 | not timed | | | |" in est
    assert tables.time_estimates(records[2:]) == ""
    # against the estimate before: each table's and the total's ratio of now to then
    before = [timed("indrnn", "T100-est-s0", 60.0, 100, 60_000),    # 10 h
              timed("lstm", "T5000-est-s0", 72.0, 10, 1_000)]      # 2 h
    est = tables.time_estimates(records, before).splitlines()
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
    assert tables.failed_runs(str(tmp_path)) == {
        "indrnn-pmnist-res-indrnn-T784-quick-s0": "error: MNIST is missing from x"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "tables.py"), "table", str(tmp_path)],
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
    table = tables.seeds_table([rec(1, 2, 40.0), rec(0, 1, 100.0), rec(1, 1, 70.0)])
    lines = table.splitlines()
    assert [l.split("|")[1:5] for l in lines[2:5]] == [
        [" 0 ", " 1 ", " test_acc ", " 100.00 "], [" 1 ", " 1 ", " test_acc ", " 70.00 "],
        [" 1 ", " 2 ", " test_acc ", " 40.00 "]]
    assert lines[-1] == "3 runs: **70.00 ± 30.00** (mean ± std), range 40.00 – 100.00."
    assert tables.mean_std_range([5.0]) == (5.0, 0.0, 5.0, 5.0)
    # MSE and BPC get four decimals, as in the other tables (0.02 and 0.16 MSE once looked alike)
    mse = tables.seeds_table([{**rec(0, 1, 0.0), "metric": "test_mse",
                              "metrics": dict(test_mse=0.02191)}])
    assert "| 0.0219 |" in mse and "**0.0219 ± 0.0000**" in mse
    # a transfer test's results file (another test length) beside its training run's: refused
    with pytest.raises(ValueError, match="different configurations"):
        tables.seeds_table([{**rec(0, 1, 99.0), "task": "copy; test T=100"},
                            {**rec(0, 1, 97.0), "task": "copy; test T=5000"}])


def test_cpu_tier_runs_get_their_own_line_with_their_budget():
    cpu = [_record("sab.py", "copy", "sab", f"T100-cpu-s{s}", "test_acc", v, seed=s)
           for s, v in ((0, 90.0), (1, 80.0))]
    for r in cpu:
        r["config"]["time_budget"] = 150.0
    paper = _record("sab.py", "copy", "sab", "T100-s0", "test_acc", 99.0)
    lines = tables.paper_tables(cpu + [paper]).splitlines()
    rows = [l for l in lines if l.startswith("| SAB (k_trunc 5, k_top 5), T=100 |")]
    assert rows == ["| SAB (k_trunc 5, k_top 5), T=100 | 100 (k_trunc 5, k_top 5) | 85.00 ± 7.07 (range 80.00 – 90.00) "
                    "| 2 | paper settings on CPU, 150 min of 1 thread | CPU X | 2.0 min |",
                    "| SAB (k_trunc 5, k_top 5), T=100 | 100 (k_trunc 5, k_top 5) | 99.00 | 1 | paper settings | CPU X | "
                    "2.0 min |"]


@pytest.mark.parametrize("name", list(tables.paper_table_defs()))
def test_every_table_label_names_the_settings_its_flags_give(name):
    """A row's label says k_trunc / k_top / T / layers / truncation: the run's own flags, parsed
    by its script, must give exactly those values."""
    import importlib
    for r in tables.paper_table_defs()[name][1]:
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


