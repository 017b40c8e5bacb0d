"""The results tables of finished runs, for run_all.sh and the docs (the training scripts never
import this file):

    python tools/tables.py table results/     # writes results/TABLES.md: the papers' tables
    python tools/tables.py seeds results/sab-copy-sab-T10-quick*.json   # a preset over seeds
    python tools/tables.py runs               # every table row's run, for run_all.sh
    python tools/tables.py estimates tools/estimates.tsv results/   # minutes per run, for run_all.sh

Each script defines its paper's table rows once, in its TABLES (label, the run's flags, the
paper's number); run_all.sh runs them and `table` fills them. run_all.sh tags every run
`<row tag>[-quick|-est|-quick-est|-cpu]-s<seed>`; a results record fills the row with the same script, task,
model and row tag (transfer rows also the ratio test T / training T), seeds are averaged, and
each scale gets its own line.
"""
import argparse
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts

SCRIPTS = ("sab.py", "indrnn.py", "rlstm.py")
_TAG_SUFFIX = re.compile(r"(-quick-est|-quick|-est|-cpu)?(-s\d+)?$")
ESTIMATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "estimates.tsv")


def mean_std_range(values):
    """(mean, sample std (0 for one value), min, max) of a list of numbers."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var), min(values), max(values)


def format_table(records):
    """Markdown, one line per finished run: the paper's number next to ours, command, hardware,
    time."""
    rows = ["| script | task | model | T | test T | metric | paper | ours | command | hardware | "
            "wall time | steps |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    T = lambda c: c.get("seq_len") or 0
    for r in sorted(records, key=lambda r: (r["script"], r["config"]["task"], r["config"]["model"],
                                            T(r["config"]), r["config"].get("test_seq_len") or
                                            T(r["config"]))):
        c, metric = r["config"], r["metric"]
        ours = r["metrics"].get(metric)
        ours = "n/a" if ours is None else f"{ours:.{_digits(metric)}f}"
        ours += " (diverged)" if r.get("diverged") else ""
        rows.append(
            f"| {r['script']} | {c['task']} | {c['model']} | {c.get('seq_len')} | "
            f"{c.get('test_seq_len') or c.get('seq_len')} | {metric} | {r['paper']} | {ours} | "
            f"`{r['command']}` | {r['hardware']} | {r['wall_seconds'] / 60:.1f} min | "
            f"{r.get('steps_done', '')} |")
    return "\n".join(rows)


def _digits(metric):
    """Decimals a table gives a metric: 2 for accuracy (%), 4 for MSE, BPC and losses."""
    return 2 if metric.endswith("acc") else 4


def seeds_table(records):
    """Markdown: one line per run of one configuration (seed, threads, test metric, steps,
    training time, hardware), then the mean ± std and the range over all runs.
    Raises ValueError if the records are not of one configuration (script, task with its test
    length, model, metric): a transfer test's results file beside its training run's, say."""
    kinds = {(r.get("script"), r.get("task"), r["config"].get("model"), r["metric"])
             for r in records}
    if len(kinds) > 1:
        raise ValueError("the files are runs of different configurations (script, task and test "
                         "length, model, metric): " + "; ".join(sorted(map(str, kinds))))
    rows = ["| seed | threads | test metric | value | best step | steps | training time | "
            "hardware |", "|---|---|---|---|---|---|---|---|"]
    d = _digits(records[0]["metric"])
    for r in sorted(records, key=lambda r: (r["config"].get("threads") or 0, r["config"]["seed"])):
        rows.append(f"| {r['config']['seed']} | {r['config'].get('threads') or 'default'} | "
                    f"{r['metric']} | {r['metrics'][r['metric']]:.{d}f}"
                    f"{' (diverged)' if r.get('diverged') else ''} | {r.get('best_step', '')} | "
                    f"{r['steps_done']} | {r['wall_seconds'] / 60:.1f} min | {r['hardware']} |")
    mean, std, lo, hi = mean_std_range([r["metrics"][r["metric"]] for r in records])
    rows.append(f"\n{len(records)} runs: **{mean:.{d}f} ± {std:.{d}f}** (mean ± std), range "
                f"{lo:.{d}f} – {hi:.{d}f}.")
    return "\n".join(rows)


# A row of a paper's table, as the scripts' TABLES define it: label, task, model, tag (the row's
# part of the run tag) and, where they differ from these defaults: args (the run's flags at the
# paper's settings, beyond the script's defaults), quick (the flags that replace them under
# --quick), seeds (how many run_all.sh runs), ckpt (add --grad-checkpoint on a GPU: full BPTT on
# long sequences), paper (the paper's number), metric, test_ratio (test T / training T of a
# transfer row), cpu (None if the row is not in `run_all.sh --cpu`, else the flags that tier
# adds to args, e.g. a stopping rule).
ROW_DEFAULTS = dict(args="", quick="", seeds=1, ckpt=False, paper="UNCONFIRMED",
                    metric="test_acc", test_ratio=None, cpu=None)


def paper_table_defs():
    """{table name: (title, rows)} from the three scripts' TABLES, in run_all.sh's order; each
    row also gets its `script`."""
    import importlib  # the scripts import this module: import them only when asked
    return {name: (title, [{**ROW_DEFAULTS, **r, "script": script} for r in rows])
            for script in SCRIPTS
            for name, (title, rows) in importlib.import_module(script[:-3]).TABLES.items()}


def print_runs():
    """run_all.sh's list: one line per row,
    `table|script|task|model|tag|seeds|ckpt|args|quick|cpu` (cpu `-`: not in the CPU tier)."""
    for name, (_, rows) in paper_table_defs().items():
        for r in rows:
            print("|".join([name, r["script"], r["task"], r["model"], r["tag"], str(r["seeds"]),
                            "ckpt" if r["ckpt"] else "", r["args"], r["quick"],
                            "-" if r["cpu"] is None else r["cpu"]]))


def row_tag(tag):
    """The row part of a run tag: `T100-quick-s2` -> `T100`, `T100-est-s0` -> `T100`."""
    return _TAG_SUFFIX.sub("", tag or "")


def _mode(record):
    """The run_all.sh mode in a run's tag: "-quick", "-est", "-quick-est", "-cpu" or None."""
    return _TAG_SUFFIX.search(record["config"].get("tag") or "").group(1)


def is_estimate(record):
    """True for a timing run of `run_all.sh --estimate [--quick]` (tag `<row>[-quick]-est-s<seed>`):
    its metrics come from seconds of training and never enter the results tables."""
    return _mode(record) in ("-est", "-quick-est")


def _scale(record):
    """"quick" (--quick), "cpu" (run_all.sh --cpu: paper settings on CPU under a time budget)
    or "paper"."""
    return "quick" if record["config"].get("quick") else "cpu" if _mode(record) == "-cpu" \
        else "paper"


def _matches(record, row):
    c = record["config"]
    ratio = c["test_seq_len"] / c["seq_len"] if c.get("test_seq_len") else None
    return (record.get("script") == row["script"] and c.get("task") == row["task"]
            and c.get("model") == row["model"] and row_tag(c.get("tag")) == row["tag"]
            and ratio == row["test_ratio"])


def failed_runs(folder):
    """{run name: its error} for every log in `<folder>/logs` without a results file beside it:
    the log's last `error: ...` line, up to its first " (" (the details stay in the log)."""
    logs, failures = os.path.join(folder, "logs"), {}
    for f in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
        name = f[:-len(".log")]
        if not f.endswith(".log") or os.path.exists(os.path.join(folder, name + ".json")):
            continue
        lines = open(os.path.join(logs, f), errors="replace").read().replace("\r", "\n").split("\n")
        errors = [l for l in lines if l.startswith("error:")] or [l for l in lines if l.strip()]
        failures[name] = errors[-1].split(" (")[0] if errors else "empty log"
    return failures


def _failure(row, failures):
    """The error of a failed run of `row` (not a transfer row) among `failures`, or None."""
    if row["test_ratio"]:
        return None
    name = "-".join((row["script"][:-3], row["task"], row["model"], row["tag"]))
    return next((m for n, m in failures.items()
                 if row_tag(n) == name and _TAG_SUFFIX.search(n).group(1) not in ("-est", "-quick-est")),
                None)


def _cell(row, group):
    """One line of a paper table: the runs of `row` at one scale."""
    values = [r["metrics"][row["metric"]] for r in group]
    d = _digits(row["metric"])
    mean, std, lo, hi = mean_std_range(values)
    ours = f"{mean:.{d}f}" + (f" ± {std:.{d}f} (range {lo:.{d}f} – {hi:.{d}f})"
                              if len(values) > 1 else "")
    ours += "".join(f" (diverged: {r['diverged']}; best checkpoint tested)" for r in group
                    if r.get("diverged"))
    kind = _scale(group[0])
    lengths = "/".join(sorted({str(r["config"].get("seq_len")) for r in group}))
    budgets = "/".join(sorted({f"{r['config']['time_budget']:g}" for r in group
                               if r["config"].get("time_budget")}))
    scale = {"quick": f"CPU-scale (--quick, T={lengths})", "paper": "paper settings",
             "cpu": "paper settings on CPU" + (f", {budgets} min of 1 thread" if budgets else "")
             }[kind]
    test_sizes = sorted({r["config"].get("test_size") or 0 for r in group})
    if test_sizes != [0]:  # --test-size: not the whole test set
        scale += f", test on first {'/'.join(str(n or 'all') for n in test_sizes)}"
    wall = sum(r["wall_seconds"] for r in group) / len(group) / 60
    return (f"| {row['label']} | {row['paper']} | {ours} | {len(group)} | {scale} | "
            f"{', '.join(sorted({r['hardware'] for r in group}))} | {wall:.1f} min |")


def paper_tables(records, failures=None):
    """Markdown: one table per paper table, one line per row and scale (paper settings, paper
    settings on CPU, or --quick), the paper's number beside ours (mean ± std over seeds), seeds,
    device and mean wall time; a row without a result says so, with the error of its failed run
    if `failures` ({run name: error}, see failed_runs) has one."""
    records = [r for r in records if not is_estimate(r)]
    out = []
    for name, (title, rows) in paper_table_defs().items():
        out += [f"## {title}", "", f"`bash run_all.sh --only {name}`", "",
                "| row | paper | ours | seeds | scale | device | wall time / run |",
                "|---|---|---|---|---|---|---|"]
        for row in rows:
            runs = [r for r in records if _matches(r, row)]
            if not runs:
                error = _failure(row, failures or {})
                status = f"no result yet: the run failed ({error})" if error else "no result yet"
                out.append(f"| {row['label']} | {row['paper']} | {status} | 0 | | | |")
            for kind in sorted({_scale(r) for r in runs}):
                out.append(_cell(row, [r for r in runs if _scale(r) == kind]))
        out.append("")
    return "\n".join(out)


def time_estimates(records, previous=()):
    """Markdown: the hours each paper table takes at the papers' settings (one seed) on the device
    of the `run_all.sh --estimate` runs among `records`, or "" if there are none. A timing run's
    hours = wall_seconds / steps_done x its configured steps (evaluation not counted).
    `previous`: the records of the estimate before (run_all.sh keeps them in
    estimate-previous/); each table and the total then get the ratio of now to then."""
    est = [r for r in records if is_estimate(r) and _scale(r) == "paper"]
    previous = [r for r in previous if _scale(r) == "paper"]
    if not est:
        return ""
    out = ["", "## Estimated hours per table at the papers' settings", "",
           "`bash run_all.sh --estimate`: every run trains for a short time budget with the "
           "papers' settings; its hours = (wall seconds / steps done) x the paper's number of "
           "steps, summed over the table's rows (one seed; evaluation not counted).", "",
           "| table | rows timed | estimated hours | longest row | device | "
           "ratio to the previous estimate |", "|---|---|---|---|---|---|"]
    totals = [0.0, 0.0]  # now and then, over the tables timed both times
    for name, (title, rows) in paper_table_defs().items():
        hours, before = ({row["label"]: (r["wall_seconds"] / max(r["steps_done"], 1)
                                         * r["config"]["steps"] / 3600, r["hardware"])
                          for row in rows for r in recs if is_estimate(r) and _matches(r, row)}
                         for recs in (est, previous))
        if all(row["test_ratio"] for row in rows):
            out.append(f"| {name} | evaluation only | | | | |")
        elif not hours:
            out.append(f"| {name} | 0 of {len(rows)} | not timed | | | |")
        else:
            longest = max(hours, key=lambda k: hours[k][0])
            now = sum(h for h, _ in hours.values())
            then = sum(h for h, _ in before.values())
            ratio = f"{now / then:.2f}x (then {then:,.1f} h)" if then else "not timed before"
            if then:
                totals = [totals[0] + now, totals[1] + then]
            out.append(f"| {name} | {len(hours)} of {len(rows)} | {now:,.1f} | {longest} "
                       f"({hours[longest][0]:,.1f} h) | "
                       f"{', '.join(sorted({d for _, d in hours.values()}))} | {ratio} |")
    if totals[1]:
        out.append(f"| all tables timed both times | | {totals[0]:,.1f} | | | "
                   f"{totals[0] / totals[1]:.2f}x (then {totals[1]:,.1f} h) |")
    return "\n".join(out) + "\n"


ESTIMATE_COLUMNS = ("scale", "device", "script", "task", "model", "row", "minutes", "hardware",
                    "date")


def estimate_rows(sources):
    """The estimated minutes of one run of each timed table row, for run_all.sh's --dry-run,
    --help and SLURM time requests: {(scale, device, script, task, model, row tag): (minutes,
    hardware, date)}, scale "quick" or "paper", device "cpu" or "gpu". `sources`: results
    folders and estimate TSV files (this function's output); a later source's row replaces an
    earlier one's. From a folder, every training run counts, timing runs of `run_all.sh
    --estimate [--quick]` and finished runs alike: minutes = wall seconds / steps done x the
    run's configured steps / 60 (a run that a stop rule ends early takes less). `--cpu` runs
    are left out (their time is their budget), and so are evaluation-only runs."""
    import datetime
    rows = {}
    for source in sources:
        if os.path.isfile(source):
            with open(source) as f:
                lines = [l.rstrip("\n").split("\t") for l in f if l.strip()][1:]
            rows.update({tuple(l[:6]): (float(l[6]), l[7], l[8]) for l in lines})
            continue
        for name in sorted(os.listdir(source)) if os.path.isdir(source) else []:
            if not name.endswith(".json"):
                continue
            r = json.load(open(os.path.join(source, name)))
            c = r.get("config", {})
            if c.get("eval_only") or _mode(r) == "-cpu" or not r.get("steps_done"):
                continue
            device = "gpu" if str(r.get("device", "")).startswith("cuda") else "cpu"
            key = (_scale(r), device, r["script"], c["task"], c["model"], row_tag(c.get("tag")))
            date = datetime.date.fromtimestamp(os.path.getmtime(os.path.join(source, name)))
            rows[key] = (r["wall_seconds"] / r["steps_done"] * c["steps"] / 60, r["hardware"],
                         date.isoformat())
    return rows


def format_estimates(rows):
    """estimate_rows' dict as TSV with a header line (the format estimate_rows reads back)."""
    lines = ["\t".join(ESTIMATE_COLUMNS)]
    lines += ["\t".join(key + (f"{m:.2f}", hw, date)) for key, (m, hw, date) in sorted(rows.items())]
    return "\n".join(lines)


def _main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["table", "seeds", "runs", "estimates"],
                   help="table: one line per run; seeds: runs of one configuration over seeds "
                        "and thread counts, with mean, std and range; runs: every table row's "
                        "run, for run_all.sh; estimates: minutes per run from estimate TSV files "
                        "and results folders (later ones win), as TSV")
    p.add_argument("files", nargs="*", help="results/*.json, or the folder results/")
    args = p.parse_args()
    if args.what == "runs":
        return print_runs()
    if args.what == "estimates":
        return print(format_estimates(estimate_rows(args.files)))
    if not args.files:
        p.error(f"{args.what} needs results files or a folder")
    if len(args.files) == 1 and os.path.isdir(args.files[0]):
        folder = args.files[0]
        records = [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
                   if f.endswith(".json")]
        before = os.path.join(folder, "estimate-previous")
        previous = [json.load(open(os.path.join(before, f))) for f in sorted(os.listdir(before))
                    if f.endswith(".json")] if os.path.isdir(before) else []
        with open(os.path.join(folder, "TABLES.md"), "w") as f:
            f.write(f"# Headline tables ({len(records)} runs)\n\n"
                    + paper_tables(records, failed_runs(folder))
                    + time_estimates(records, previous))
        print(f"wrote {os.path.join(folder, 'TABLES.md')}")
        return
    records = [json.load(open(f)) for f in sorted(args.files)]
    try:
        print(seeds_table(records) if args.what == "seeds" else format_table(records))
    except ValueError as e:
        p.error(f"{args.what}: {e}")


if __name__ == "__main__":
    _main()
