"""Draws docs/figures/gradflow-models.png and gradflow-classic.png from the CSV files that
`--grad-flow` writes (a docs-only tool: it needs matplotlib, which the scripts do not).

    G=results/gradflow   # the commands of docs/gradflow.md write their CSV files there
    python docs/figures/gradflow.py $G
"""
import csv
import glob
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FLOOR = 1e-16  # a zero gradient, drawn at the bottom of the log scale


def curves(path):
    """{label: ([distance], [relative norm])} of one --grad-flow CSV file."""
    out = defaultdict(lambda: ([], []))
    for row in csv.DictReader(open(path)):
        d, r = out[row["label"]]
        d.append(int(row["distance"]))
        r.append(max(float(row["relative"] or 0), FLOOR))
    return out


def one(folder, pattern):
    files = sorted(glob.glob(os.path.join(folder, pattern)))
    if not files:
        raise SystemExit(f"error: no {pattern} in {folder}: run the commands of docs/gradflow.md")
    return curves(files[0])


def panel(ax, data, title, styles=None):
    for label, (d, r) in data.items():
        ax.plot(d, r, lw=1, label=label, **(styles or {}).get(label, {}))
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 2, 1e3)
    ax.set_xlabel("distance T - t (steps back from the last step)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    ax.grid(alpha=0.3)


def models_figure(folder):
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    panel(axes[0, 0], one(folder, "sab-copy-gradflow-T100.csv"), "sab.py: copy T=100, initialisation")
    panel(axes[0, 1], one(folder, "indrnn-adding-gradflow-T1000.csv"),
          "indrnn.py: adding T=1000, initialisation")
    panel(axes[0, 2], one(folder, "rlstm-mnist-gradflow-T784-trunc300.csv"),
          "rlstm.py: MNIST T=784, initialisation")
    trained = {**one(folder, "sab-copy-gradflow-*-sab-best.csv"),
               **one(folder, "sab-copy-gradflow-*-tbptt-best.csv")}
    panel(axes[1, 0], trained, "copy T=10 (--quick), trained")
    panel(axes[1, 1], one(folder, "indrnn-adding-gradflow-*-indrnn-best.csv"),
          "adding T=500 (--quick), IndRNN trained")
    panel(axes[1, 2], one(folder, "rlstm-mnist-gradflow-*-rlstm-best.csv"),
          "MNIST (--quick), r-LSTM Truncate300 trained")
    for ax in axes[:, 0]:
        ax.set_ylabel("||dL/dh_t|| / ||dL/dh_T||  (0 drawn at 1e-16)")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "gradflow-models.png"), dpi=80)


def classic_figure(folder):
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    by_radius = defaultdict(lambda: ([], []))
    for row in csv.DictReader(open(os.path.join(folder, "indrnn-gradflow-spectral.csv"))):
        d, r = by_radius[row["radius"]]
        d.append(int(row["distance"]))
        r.append(float(row["ratio"]))
    for radius, (d, r) in by_radius.items():
        a.plot(d, r, label=f"spectral radius {radius}")
    a.set_yscale("log")
    a.set_xlabel("distance d (steps of h_t = W h_(t-1))")
    a.set_ylabel("||dL/dh_(T-d)|| / ||dL/dh_T||  (= radius^d)")
    a.set_title("BPTT through a linear recurrence: the power method", fontsize=9)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    rows = list(csv.DictReader(open(os.path.join(folder, "indrnn-gradflow-cliff-surface.csv"))))
    ws, bs = sorted({float(r["w"]) for r in rows}), sorted({float(r["b"]) for r in rows})
    loss = {(float(r["w"]), float(r["b"])): float(r["loss"]) for r in rows}
    import math
    grid = [[math.log10(loss[w, bb] + 1e-6) for w in ws] for bb in bs]
    im = b.imshow(grid, origin="lower", aspect="auto", cmap="viridis",
                  extent=(ws[0], ws[-1], bs[0], bs[-1]))
    fig.colorbar(im, ax=b, label="log10 loss (h_50 - 0.7)^2")
    paths = defaultdict(lambda: ([], []))
    for row in csv.DictReader(open(os.path.join(folder, "indrnn-gradflow-cliff-descent.csv"))):
        w, bb = paths[row["clip"]]
        w.append(float(row["w"]))
        bb.append(float(row["b"]))
    for clip, (w, bb) in paths.items():
        label = "no clipping" if float(clip) == 0 else f"gradient-norm clip {clip}"
        b.plot(w, bb, "o-" if float(clip) else "x--", ms=2, lw=1, label=label,
               color="white" if float(clip) else "red")
    b.set_xlim(ws[0], ws[-1])
    b.set_ylim(bs[0], bs[-1])
    b.set_xlabel("w")
    b.set_ylabel("b")
    b.set_title("one unit h_t = w sigmoid(h_(t-1)) + b, 50 steps: the cliff", fontsize=9)
    b.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "gradflow-classic.png"), dpi=80)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    models_figure(sys.argv[1])
    classic_figure(sys.argv[1])
    print("wrote", *(os.path.join(HERE, f"gradflow-{n}.png") for n in ("models", "classic")))
