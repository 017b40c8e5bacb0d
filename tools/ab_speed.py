"""CPU speed of every --quick preset, one commit against another: interleaved A/B.

    python tools/ab_speed.py BASE [NEW] [--rounds 5] [--data-dir DIR] [--only sab.py:copy ...]

For each preset a short run of a fixed number of steps (evaluated once, on a few samples) is
trained by BASE and by NEW (default: this working tree), each checked out into a temporary git
worktree, in turn, `rounds` times; a run's time is its training time per step (`wall_seconds /
steps_done` of its results file: after data loading and model building). Prints a Markdown
table: the median per version and the median of the rounds' ratios (NEW / BASE) with their
range, so that a slow spell of a shared machine hits both alike. One thread per run, one run at
a time.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (script, flags, steps): every --quick preset with data here (CIFAR-10, text8, StanfordDogs,
# DBpedia and NTU need downloads or registration: their models are the ones timed here)
PRESETS = [("sab.py", "--task copy", 400), ("sab.py", "--task copy --model tbptt", 800),
           ("sab.py", "--task adding", 100), ("sab.py", "--task pmnist", 3),
           ("sab.py", "--task ptb", 60), ("indrnn.py", "--task adding --model indrnn", 300),
           ("indrnn.py", "--task adding --model lstm", 60), ("indrnn.py", "--task mnist", 20),
           ("indrnn.py", "--task pmnist", 20), ("indrnn.py", "--task ptb", 40),
           ("rlstm.py", "--task mnist", 12), ("rlstm.py", "--task mnist --model lstm", 30),
           ("rlstm.py", "--task pmnist", 12)]


def seconds_per_step(tree, script, flags, steps, data_dir, out):
    cmd = [sys.executable, os.path.join(tree, script), *flags.split(), "--quick", "--steps",
           str(steps), "--eval-every", str(steps), "--eval-size", "16", "--test-size", "16",
           "--threads", "1", "--device", "cpu", "--data-dir", data_dir, "--out-dir", out,
           "--tag", "ab", "--restart"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tree)
    (name,) = [f for f in os.listdir(out) if f.endswith(".json")]
    with open(os.path.join(out, name)) as f:
        record = json.load(f)
    os.remove(os.path.join(out, name))
    return record["wall_seconds"] / record["steps_done"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base", help="the commit to compare with (a git revision)")
    p.add_argument("new", nargs="?", help="the commit to time (default: this working tree)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data-dir", default=os.path.join(ROOT, "data"))
    p.add_argument("--only", nargs="*", help="presets as SCRIPT:TASK, e.g. sab.py:copy")
    args = p.parse_args()
    presets = [(s, f, n) for s, f, n in PRESETS
               if not args.only or f"{s}:{f.split()[1]}" in args.only]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": os.path.join(tmp, "base"), "new": ROOT}
        for version, ref in (("base", args.base), ("new", args.new)):
            if ref:
                trees[version] = os.path.join(tmp, version)
                subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach",
                                trees[version], ref], check=True, capture_output=True)
        try:
            print(f"| preset | steps | s / step, {args.base} | s / step, "
                  f"{args.new or 'this tree'} | ratio (range over {args.rounds} rounds) |\n"
                  f"|---|---|---|---|---|")
            for script, flags, steps in presets:
                times = {"base": [], "new": []}
                for _ in range(args.rounds):
                    for version, tree in trees.items():
                        times[version].append(seconds_per_step(
                            tree, script, flags, steps, args.data_dir, os.path.join(tmp, "out")))
                ratios = [n / b for n, b in zip(times["new"], times["base"])]
                print(f"| `{script} {flags} --quick` | {steps} | "
                      f"{statistics.median(times['base']):.3f} | "
                      f"{statistics.median(times['new']):.3f} | "
                      f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |",
                      flush=True)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree],
                                   capture_output=True)


if __name__ == "__main__":
    main()
