"""What the three training scripts share: tasks and their data, losses and metrics, the shared
flags, and the run harness (checkpoints, resume, lock, Ctrl-C, log, results record). No model
code lives here; the results tables of finished runs are tools/tables.py.

    task = make_task("copy", seq_len=100, batch_size=64, data_dir="./data", seed=0)
    x, y = task.train_batch(step)   # a pure function of (seed, step): a resumed run sees the same
    for x, y in task.eval_batches("valid"): ...

x: LongTensor tokens (T, B) or FloatTensor (T, B, C); y: (T, B) tokens for per-step tasks (copy,
ptb, text8), (B,) labels for classification, (B,) floats for regression (adding).
"""
import argparse
import csv
import fcntl
import gzip
import hashlib
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

PMNIST_SEED = 92916     # the one fixed pixel permutation of pMNIST, the same in every script
SPLIT_SEED = 1234       # which 5% of a training set is held out for validation
COPY_EVAL_SEEDS = {"valid": 10_001, "test": 10_002}  # fixed copy / adding evaluation sets


class DataError(RuntimeError):
    """A dataset is missing, cannot be downloaded or fails its checksum; the message says what to
    do."""


# ----------------------------------------------------------------------------------------------
# Synthetic tasks: a fresh batch every training step, fixed seeded evaluation sets.

def copy_batch(batch_size, seq_len, generator):
    """Copy memory in the SAB layout (Ke et al. 2018, section 5.1): 10 digits from 1..8, T-1
    blanks (0), a marker 9, 10 blanks; the target is blanks (0) for T+10 steps, then the digits.
    Returns x, y: LongTensors (T+20, B), tokens 0..9 and 0..8."""
    digits = torch.randint(1, 9, (10, batch_size), generator=generator)
    x = torch.zeros(seq_len + 20, batch_size, dtype=torch.long)
    x[:10], x[seq_len + 9] = digits, 9
    y = torch.zeros(seq_len + 20, batch_size, dtype=torch.long)
    y[seq_len + 10:] = digits
    return x, y


def adding_batch(batch_size, seq_len, generator):
    """Adding problem (Hochreiter & Schmidhuber 1997; the IndRNN and SAB variant): channel 0
    holds U(0, 1) values, channel 1 marks one position in each half; the target is the sum of
    the marked values. Returns x (T, B, 2) and y (B,) in [0, 2]. ValueError for T < 2."""
    B, T = batch_size, seq_len
    if T < 2:
        raise ValueError(f"adding needs seq_len >= 2, got {T}")
    values, marker = torch.rand(T, B, generator=generator), torch.zeros(T, B)
    for low, high in ((0, T // 2), (T // 2, T)):
        marker[torch.randint(low, high, (B,), generator=generator), torch.arange(B)] = 1.0
    return torch.stack([values, marker], dim=2), (values * marker).sum(0)


def step_generator(seed, step):
    """A generator whose state depends on (seed, step) only, so a resumed run sees the same data."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class SyntheticTask:
    """Copy or adding: a fresh batch every step, fixed seeded valid/test sets of eval_size; the
    test split is at test_seq_len (transfer)."""

    def __init__(self, name, seq_len, batch_size, seed, test_seq_len=None, eval_size=1000):
        self.name, self.seq_len, self.batch_size, self.seed = name, seq_len, batch_size, seed
        self.test_seq_len, self.eval_size = T_test, _ = test_seq_len or seq_len, eval_size
        T = seq_len
        self.make, self.kind, self.n_in, self.n_out = (
            (copy_batch, "copy", 10, 9) if name == "copy" else (adding_batch, "regress", 2, 1))
        self.description = (
            f"copy (SAB layout): 10 digits from 1..8, T-1={T - 1} blanks, marker 9, 10 blanks; "
            f"length T+20={T + 20}; target: blanks then the digits; metric: accuracy and CE on "
            f"the last 10 steps; test T={T_test}" if name == "copy" else
            f"adding: T={T}, 2 channels (U(0,1) values, marker), one marker in each half, target "
            f"= sum of the marked values, metric MSE (predicting 1 gives about 0.167); test "
            f"T={T_test}")

    def train_batch(self, step):
        return self.make(self.batch_size, self.seq_len, step_generator(self.seed, step))

    def eval_batches(self, split, limit=None):
        T = self.test_seq_len if split == "test" else self.seq_len
        g = torch.Generator().manual_seed(COPY_EVAL_SEEDS[split] + T)
        n = limit or self.eval_size
        for start in range(0, n, self.batch_size):
            yield self.make(min(self.batch_size, n - start), T, g)


# ----------------------------------------------------------------------------------------------
# Images as pixel sequences, from torchvision's datasets.

def _torchvision_dataset(cls, root, train):
    """torchvision's dataset, downloaded (its archives MD5-checked) if missing; DataError naming
    the file to delete or to put in place otherwise."""
    from torchvision.datasets.utils import check_integrity
    try:
        return cls(root=root, train=train, download=True)
    except Exception as e:  # network errors, corrupted archives, unreadable extracted files
        where = os.path.join(root, "MNIST", "raw") if cls.__name__ == "MNIST" else root
        resources = getattr(cls, "resources", [])
        for name, md5 in resources:
            path = os.path.join(where, name)
            if os.path.exists(path) and not check_integrity(path, md5):
                raise DataError(f"{path} is corrupt (MD5 differs from the official file): "
                                f"delete it, or put the official file there") from e
            if path.endswith(".gz") and os.path.exists(path[:-3]):
                _check_extracted(path)  # e.g. a truncated copy that torchvision cannot read
        raise DataError(
            f"{cls.__name__} is missing from {os.path.abspath(root)} and could not be downloaded "
            f"({type(e).__name__}: {e}). Put the official files ("
            f"{', '.join(n for n, _ in resources) or cls.filename}) into "
            f"{os.path.abspath(where)}, or run once with network access.") from e


def _check_extracted(archive):
    """torchvision checks an archive when it downloads it, not the file it extracted from it and
    reads later: DataError naming that file if it differs from its .gz (a changed label, a cut)."""
    with gzip.open(archive, "rb") as f, open(archive[:-3], "rb") as g:
        if f.read() != g.read():
            raise DataError(f"{archive[:-3]} differs from its verified archive "
                            f"{os.path.basename(archive)}: delete it (it is extracted again)")


def holdout(n):
    """(indices kept for training, the 5% held out for validation) of n training samples: the
    same fixed split (seed SPLIT_SEED) in every script."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[n // 20:], order[:n // 20]


def image_splits(x_train, y_train, test):
    """{"train", "valid", "test"}: (x, y) pairs of an image-like task (see `holdout`)."""
    train, valid = holdout(len(x_train))
    return {"train": (x_train[train], y_train[train]), "valid": (x_train[valid], y_train[valid]),
            "test": test}


class EpochShuffle:
    """Training batches drawn without replacement; an epoch's order depends on (seed, epoch)
    only, so a resumed run sees the same batches."""
    _epoch = _order = None

    def _epoch_indices(self, n, step):
        """Positions in 0..n-1 of the batch_size training samples of `step`. DataError if a batch
        is larger than the training set (it would silently be the whole set)."""
        if self.batch_size > n:
            raise DataError(f"--batch-size {self.batch_size} is larger than the training set "
                            f"({n} samples)")
        epoch, i = divmod(step, n // self.batch_size)
        if self._epoch != epoch:
            self._epoch = epoch
            self._order = torch.randperm(n, generator=step_generator(self.seed, epoch))
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]


class ImageTask(EpochShuffle):
    """mnist, pmnist (784 steps x 1 channel) and cifar10 (1024 steps x 3 RGB channels), row-major
    scans: pixels scaled to [0, 1], or with as_tokens=True the values 0..255 as tokens. 5% of the
    training set validates (`image_splits`); the test split is the official one. DataError if the
    data cannot be had (see `_torchvision_dataset`) or a file differs from its archive."""

    def __init__(self, name, batch_size, data_dir, seed, as_tokens=False):
        import torchvision  # here, so that synthetic tasks need no torchvision
        from torchvision.datasets.utils import check_integrity
        self.name, self.batch_size, self.seed, self.as_tokens = name, batch_size, seed, as_tokens
        self.kind, self.n_out, self.vocab = "classify", 10, 256 if as_tokens else None
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.MNIST
        data = [_torchvision_dataset(cls, data_dir, train) for train in (True, False)]
        self.n_in, self.seq_len = (3, 1024) if name == "cifar10" else (1, 784)
        for file, md5 in getattr(cls, "resources", []) if name != "cifar10" else []:
            archive = os.path.join(data_dir, "MNIST", "raw", file)  # what torchvision read
            if not check_integrity(archive, md5):
                raise DataError(f"{archive} is corrupt (MD5 differs from the official file): "
                                f"delete it and run again (it is downloaded), or put the "
                                f"official file there")
            _check_extracted(archive)
        xs = [torch.as_tensor(d.data).reshape(len(d.data), self.seq_len, self.n_in) for d in data]
        ys = [torch.as_tensor(d.targets, dtype=torch.long) for d in data]
        if name == "pmnist":
            perm = torch.randperm(784, generator=torch.Generator().manual_seed(PMNIST_SEED))
            xs = [x[:, perm] for x in xs]
        self.data = image_splits(xs[0], ys[0], (xs[1], ys[1]))
        self._epoch_indices(len(self.data["train"][0]), 0)  # refuses too large a batch now
        self.description = (
            f"{name}: {self.seq_len} steps x {self.n_in} channel(s), pixels "
            f"{'as tokens 0..255' if as_tokens else 'scaled to [0,1]'}"
            + (f", fixed permutation seed {PMNIST_SEED}" if name == "pmnist" else "")
            + f"; train {len(self.data['train'][0])} / valid {len(self.data['valid'][0])} (5%, "
              f"seed {SPLIT_SEED}) / test {len(xs[1])}; metric accuracy")

    def _batch(self, x, y):
        x = x.transpose(0, 1)  # (B, T, C) -> (T, B, C)
        if self.as_tokens:
            return x.squeeze(2).long() if self.n_in == 1 else x.long(), y
        return x.float() / 255.0, y

    def train_batch(self, step):
        x, y = self.data["train"]
        idx = self._epoch_indices(len(x), step)
        return self._batch(x[idx], y[idx])

    def eval_batches(self, split, limit=None):
        x, y = self.data[split]
        n = len(x) if limit is None else min(limit, len(x))
        for start in range(0, n, self.batch_size):
            yield self._batch(x[start:min(start + self.batch_size, n)],
                              y[start:min(start + self.batch_size, n)])


# ----------------------------------------------------------------------------------------------
# Character-level language modelling: Penn Treebank here, text8 (sab.py's alone) in sab.py.

# Each PTB file with its MD5: a byte-identical copy of Mikolov's simple-examples split at a fixed
# commit (the original tarball has moved before).
PTB_URL = ("https://raw.githubusercontent.com/arthurdehgan/IFT6135_assignment_2/"
           "191820cabc95c8d8af11d0bf3679207dd3b97e08/data/")
PTB_FILES = {"train": ("ptb.char.train.txt", "874909f99060142f6b88cc74c34baaa2"),
             "valid": ("ptb.char.valid.txt", "9e0fe5bec2a8bf43fd686dc23d5ab8bb"),
             "test": ("ptb.char.test.txt", "1f9a2d1afe00f76e8bfbe09a65439681")}


def download(url, folder, name, md5=None, what=""):
    """folder/name, downloaded with torchvision's download_url (which checks the MD5) if missing.
    DataError if a file already there fails its MD5 (torchvision checks what it downloads, not
    what it finds) or the download fails; `what` tells where to get the file instead."""
    from torchvision.datasets.utils import check_integrity, download_url
    path = os.path.join(folder, name)
    if os.path.exists(path):
        if md5 and not check_integrity(path, md5):
            raise DataError(f"{path} fails its MD5 checksum (expected {md5}): the file is "
                            f"corrupted or truncated. Delete it and run again to download it.")
        return path
    try:
        download_url(url, folder, name, md5)
    except (OSError, RuntimeError) as e:
        raise DataError(f"{name} is missing from {folder} and could not be downloaded from "
                        f"{url} ({type(e).__name__}: {e}). {what}") from e
    return path


class CharLMTask:
    """Character-level language modelling over text = {"train", "valid", "test": sequences of
    characters}. Each split is cut into B contiguous streams; batch i is the window
    [i*T, (i+1)*T) of every stream, so a hidden state may be carried from batch to batch.
    Metric: bits per character (BPC, cross-entropy / ln 2). DataError for a split too short."""

    def __init__(self, name, text, seq_len, batch_size):
        self.name, self.seq_len, self.batch_size, self.kind = name, seq_len, batch_size, "lm"
        self.vocab_list = sorted(set(text["train"]))
        index = {c: i for i, c in enumerate(self.vocab_list)}
        self.n_in = self.n_out = self.vocab = len(self.vocab_list)
        self.streams = {}
        for s, t in text.items():  # (B, N): stream j is the j-th of B equal parts of the split
            data = torch.tensor([index[c] for c in t], dtype=torch.long)
            n = len(data) // batch_size
            if n <= seq_len:  # not one window of T inputs and T targets per stream
                raise DataError(f"--batch-size {batch_size} x --seq-len {seq_len}: the {s} split "
                                f"of {name} ({len(data)} characters) is too short")
            self.streams[s] = data[:n * batch_size].view(batch_size, n)
        self.description = (
            f"{name} (char level): vocab {self.vocab}, characters train/valid/test "
            f"{'/'.join(str(len(text[s])) for s in ('train', 'valid', 'test'))}, {batch_size} "
            f"contiguous streams, windows of T={seq_len}; metric BPC")

    def windows(self, split):
        """Number of windows of T steps in one pass over a split."""
        return (self.streams[split].shape[1] - 1) // self.seq_len

    def _window(self, split, i):
        chunk = self.streams[split][:, i * self.seq_len:(i + 1) * self.seq_len + 1].t()  # (T+1, B)
        return chunk[:-1], chunk[1:]

    def train_batch(self, step):
        return self._window("train", step % self.windows("train"))

    def eval_batches(self, split, limit=None):
        for i in range(self.windows(split) if limit is None else min(limit, self.windows(split))):
            yield self._window(split, i)


def make_task(name, seq_len=None, batch_size=64, data_dir="./data", seed=0, test_seq_len=None,
              as_tokens=False, eval_size=1000):
    """A shared task: copy, adding (T = seq_len), mnist, pmnist, cifar10 (fixed T), ptb (windows
    of seq_len); each script builds its others. Raises ValueError, DataError."""
    if name in ("copy", "adding"):
        return SyntheticTask(name, seq_len, batch_size, seed, test_seq_len, eval_size)
    if name in ("mnist", "pmnist", "cifar10"):
        return ImageTask(name, batch_size, data_dir, seed, as_tokens)
    if name == "ptb":  # space-separated characters; '_' marks word boundaries
        folder = os.path.join(data_dir, "ptb")
        text = {s: [c for c in open(download(PTB_URL + f, folder, f, md5, (
            f"Put ptb.char.train.txt, ptb.char.valid.txt and ptb.char.test.txt (Mikolov's "
            f"simple-examples/data) into {folder}."))).read().split(" ") if c]
            for s, (f, md5) in PTB_FILES.items()}
        return CharLMTask(name, text, seq_len, batch_size)
    raise ValueError(f"unknown task {name!r}")


# ----------------------------------------------------------------------------------------------
# Losses and metrics, one definition for every script.

def loss_and_stats(kind, out, y, stats=True):
    """(loss, stats) of a batch. kind: "copy" | "lm" (out (T, B, V), y (T, B)), "classify" (out
    (B, C), y (B,)) or "regress" (out (B,) or (B, 1), y (B,)). loss: the scalar tensor to
    backpropagate (mean cross-entropy in nats over all steps, or MSE); stats: Python floats to
    add up over batches (add_stats) for `summarize`, or None with stats=False (each statistic is
    a copy from the device). ValueError for an unknown kind."""
    if kind in ("copy", "lm"):
        T, B, V = out.shape
        ce = F.cross_entropy(out.float().reshape(T * B, V), y.reshape(T * B),
                             reduction="none").view(T, B)
        if not stats:
            return ce.mean(), None
        result = {"n": B, "ce_sum": ce.mean(0).sum().item()}
        if kind == "copy":  # the 10 recalled digits
            result["last_ce_sum"] = ce[-10:].mean(0).sum().item()
            result["last_correct"] = (out[-10:].argmax(-1) == y[-10:]).float().mean(0).sum().item()
        return ce.mean(), result
    if kind not in ("classify", "regress"):
        raise ValueError(f"unknown task kind {kind!r}")
    loss = F.cross_entropy(out.float(), y) if kind == "classify" else \
        F.mse_loss(out.float().reshape(-1), y)
    if not stats:
        return loss, None
    if kind == "classify":
        return loss, {"n": len(y), "ce_sum": loss.item() * len(y),
                      "correct": (out.argmax(-1) == y).sum().item()}
    return loss, {"n": len(y), "se_sum": loss.item() * len(y)}


def summarize(kind, stats, prefix):
    """Summed statistics as metrics: `{prefix}_acc` (%), `_ce` (nats), `_mse`, `_bpc`."""
    n = stats["n"]
    if kind == "copy":
        return {f"{prefix}_acc": 100.0 * stats["last_correct"] / n,
                f"{prefix}_ce": stats["last_ce_sum"] / n, f"{prefix}_ce_all": stats["ce_sum"] / n}
    if kind == "lm":
        return {f"{prefix}_bpc": stats["ce_sum"] / n / math.log(2)}
    if kind == "classify":
        return {f"{prefix}_acc": 100.0 * stats["correct"] / n, f"{prefix}_ce": stats["ce_sum"] / n}
    return {f"{prefix}_mse": stats["se_sum"] / n}


def add_stats(total, stats):
    """Adds the statistics of one batch into `total` (a dict) and returns it."""
    for k, v in stats.items():
        total[k] = total.get(k, 0.0) + v
    return total


# Which metric picks the best checkpoint, whether larger is better, and every validation metric
# of a task kind (see summarize: the CSV log's last columns).
SELECT = {"copy": ("valid_acc", True), "classify": ("valid_acc", True),
          "regress": ("valid_mse", False), "lm": ("valid_bpc", False)}
COLUMNS = {"copy": ["acc", "ce", "ce_all"], "lm": ["bpc"], "classify": ["acc", "ce"],
           "regress": ["mse"]}


# ----------------------------------------------------------------------------------------------
# The command line: the flags every script shares, spelled the same everywhere.

def _number(cast, low, high, what):
    """An argparse type that refuses anything outside [low, high] (and NaN, inf) in one line:
    integers below 2^31, floats at most 1e6, so that nothing overflows later."""
    def parse(s):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        if not (math.isfinite(v) and low(v) and v <= high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        return v
    return parse


positive_int = _number(int, lambda v: v > 0, 2**31 - 1, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, 2**31 - 1, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0, 1e6, "a number in (0, 1e+06]")
nonneg_float = _number(float, lambda v: v >= 0, 1e6, "a number in [0, 1e+06]")
probability = _number(float, lambda v: v >= 0, 1.0, "a number in [0, 1]")
fraction = _number(float, lambda v: v >= 0, 1.0 - 1e-9, "a number in [0, 1)")


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default for the run asked about; none for switches and flags without one."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def common_parser(description, tasks, models):
    """The parser with the flags all three scripts share. A script adds its own, sets the
    defaults of the preset that `first_look` finds (set_defaults), then calls `parse`."""
    p = argparse.ArgumentParser(description=description, formatter_class=_Help)
    a, pi, pf, nf = p.add_argument, positive_int, positive_float, nonneg_float
    a("--task", choices=tasks, default=tasks[0], help="the task to train on")
    a("--model", choices=models, default=models[0], help="the model to train")
    a("--quick", action="store_true", help="the CPU-scale preset of the task: minutes")
    a("--seq-len", type=pi, help="T")
    a("--test-seq-len", type=pi, help="evaluate the test set at this T (transfer)")
    a("--batch-size", type=pi, help="sequences per training batch")
    a("--hidden-size", type=pi, help="units per recurrent layer")
    a("--layers", type=pi, help="recurrent layers")
    a("--lr", type=pf, help="learning rate")
    a("--clip", type=nf, help="gradient-norm clip (0: none)")
    a("--steps", type=pi, help="training steps (optimizer updates), at most")
    a("--eval-every", type=pi, help="validate and checkpoint every N steps")
    a("--eval-size", type=pi, help="validation samples (windows for ptb, text8) per evaluation")
    a("--test-size", type=pi, help="test on the first N samples (windows for ptb, text8) only; "
                                   "without it the whole test set")
    a("--stop-at", type=float, help="stop training once the validation metric reaches this "
                                    "(MSE, BPC: at or below; accuracy in %%: at or above)")
    a("--time-budget", type=pf, help="a safety cap: stop training after this many minutes "
                                     "(the results file says so)")
    a("--seed", type=nonneg_int, default=0, help="seed of the weights and the training data")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto",
      help="auto: the faster of CPU and GPU for this run, measured")
    a("--amp", nargs="?", const="auto", default="off", choices=["off", "auto", "bf16", "fp16"],
      help="mixed precision under torch.autocast: bf16 where supported, else fp16 + GradScaler")
    a("--compile", action="store_true", help="compile the forward pass and loss of a training "
      "step with torch.compile (one graph, its backward too; CUDA graphs on a GPU)")
    a("--grad-checkpoint", action="store_true",
      help="recompute the forward pass in time segments (torch.utils.checkpoint)")
    a("--data-dir", default="./data", help="datasets are read (and downloaded) here")
    a("--out-dir", default="./results", help="results, logs and figures; checkpoints in ckpt/")
    a("--tag", help="name of the run's files; without it T<seq-len>[-quick][-s<seed>][-<hash of "
                    "the flags that differ from the preset>]")
    a("--resume", action="store_true", help="continue from the last checkpoint of this run")
    a("--restart", action="store_true", help="delete this run's checkpoints and results and "
                                             "start over (an existing run is refused without)")
    a("--eval-only", action="store_true", help="no training: test the best checkpoint of this "
                                               "run (with --test-seq-len: at another T)")
    a("--checkpoint-minutes", type=pf, default=5.0,
      help="also write a checkpoint every this many minutes of wall time")
    a("--benchmark", action="store_true", help="time and memory against nn.LSTM, then exit")
    a("--grad-flow", action="store_true", help="no training: ||dL/dh_t|| for every step t of one "
      "batch, at initialisation (with --eval-only: of this run's best checkpoint), then exit")
    a("--threads", type=pi, default=1, help="torch CPU threads; a run's numbers depend on them")
    return p


def flags_given(argv=None):
    """The flags written on the command line `argv` (default sys.argv[1:]), e.g. {"--seq-len"}:
    for what a default cannot tell, whether the user chose a value."""
    return {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv)}


def first_look(p, argv, *flags):
    """--task, --model, --quick, --seq-len and `flags` as argv gives them (the parser's defaults
    where absent or invalid, which `parse` then refuses): what a script's preset depends on, read
    before the real parse so that the preset can become the parser's defaults."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--quick", action="store_true")
    for flag in ("--task", "--model", "--seq-len", *flags):
        first.add_argument(flag)
    seen = first.parse_known_args(argv)[0]
    for name in ("task", "model"):
        if getattr(seen, name) not in p._option_string_actions[f"--{name}"].choices:
            setattr(seen, name, p.get_default(name))
    seen.seq_len = int(seen.seq_len) if (seen.seq_len or "").isdigit() else None
    p.epilog = (f"The defaults shown are those of --task {seen.task} --model {seen.model}"
                f"{' --quick' if seen.quick else ''}; another's: add its --task, --model or "
                f"--quick to --help.")
    return seen


def parse(p, argv):
    """argv parsed once (with the preset's defaults, see `first_look`) and the checks every
    script shares, each a one-line usage error."""
    args = p.parse_args(argv)
    for flag, T in (("--seq-len", args.seq_len), ("--test-seq-len", args.test_seq_len)):
        if args.task == "adding" and T is not None and T < 2:
            p.error(f"{flag} {T}: adding needs T >= 2 (one marker in each half)")
    for flag, path in (("--data-dir", args.data_dir), ("--out-dir", args.out_dir)):
        if os.path.isfile(path):
            p.error(f"{flag} {path} is a file, not a folder")
    return args


def run_tag(p, args, base):
    """--tag, or `base` (e.g. T<seq-len>) + "-quick" + "-s<seed>" (a seed other than 0) + a hash
    of the flags that shape the computation and differ from the preset: two configurations never
    share a name, and the preset's own runs keep short ones."""
    defaults = vars(p.parse_args([]))
    changed = {k: v for k, v in sorted(vars(args).items()) if k in defaults and
               k not in RESUMABLE | {"task", "model", "seq_len", "tag", "seed"} and v != defaults[k]}
    return args.tag or (base + "-quick" * args.quick + (f"-s{args.seed}" if args.seed else "")
                        + ("-" + hashlib.sha1(json.dumps(changed, default=str).encode())
                           .hexdigest()[:6] if changed else ""))


# Flags that may differ on --resume: when and how long a run goes, where it reads and writes.
# Every other flag shapes the model, the data or the optimizer and must match the checkpoint.
RESUMABLE = {"steps", "stop_at", "time_budget", "eval_every", "test_size", "test_seq_len",
             "resume", "restart", "eval_only", "grad_flow", "threads", "device", "compile", "data_dir",
             "out_dir", "checkpoint_minutes", "grad_checkpoint", "quick", "benchmark",
             "ss_steps", "steps_like", "unconfirmed"}


# ----------------------------------------------------------------------------------------------
# Device, precision, compilation, memory, and what a run records about its machine.

def setup(args, probe=None):
    """Threads, device, AMP and the seed of a run: (device, autocast dtype or None, GradScaler or
    not). SystemExit for a device or an AMP mode this machine lacks. --device auto: the CPU
    without a GPU; with one, and `probe` given, the faster of the two for this run: probe(device,
    amp_dtype) returns a function that takes one training step there, and 3 timed steps after a
    warm-up decide (a step loop of small operations can run faster on one CPU thread than on a
    GPU that waits on kernel launches); one line says which, and both times; the random state
    is restored. Without a probe (--benchmark), or with --compile (for CUDA graphs): the GPU."""
    torch.set_num_threads(args.threads)
    # Flush float32 values below 1.2e-38 to zero on CPU: gradients that vanish through a long
    # LSTM reach that range, and arithmetic on subnormal numbers is slow (adding at T = 1000,
    # nn.LSTM, one thread: 131 s for 20 steps with them, 17 s without, the same test MSE).
    torch.set_flush_denormal(True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if args.amp == "fp16" and args.device == "cpu":
        raise SystemExit("error: --amp fp16 needs a CUDA device; on CPU use --amp bf16")
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    if args.device == "auto" and device.type == "cuda" and probe and not args.compile:
        seconds, rng = {}, (torch.get_rng_state(), torch.cuda.get_rng_state_all())
        for d in (torch.device("cpu"), device):
            if args.amp != "fp16" or d.type == "cuda":
                step = probe(d, _amp(args, d)[0])
                step()  # warm-up
                seconds[d] = benchmark(step, d, repeats=3, memory=False)[0]
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state_all(rng[1])
        device = min(seconds, key=seconds.get)
        print(f"== --device auto: {device.type}, the faster for this run: " + ", ".join(
            f"{t * 1e3:.1f} ms per training step on {hardware(d)}" for d, t in seconds.items()))
    torch.manual_seed(args.seed)
    return (device, *_amp(args, device))


def _amp(args, device):
    """(autocast dtype or None, use a GradScaler) of --amp on `device`."""
    amp = args.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    return {"off": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[amp]


def compiled(fn, args, device):
    """fn, or with --compile torch.compile(fn, fullgraph=True): the forward pass and loss of a
    training step as one graph (a graph break is an error, not a silent fallback), whose
    backward AOTAutograd compiles too; on CUDA in mode "reduce-overhead" (CUDA graphs: the step's
    kernels replayed without a launch each). nn.LSTM / nn.RNN are traced into their cell-level
    operations (allow_rnn); on CPU with oneDNN off, whose fused LSTM cannot be compiled for
    training (PyTorch issue 158007)."""
    if not args.compile:
        return fn
    torch._dynamo.config.allow_rnn = True
    fast = torch.compile(fn, fullgraph=True, mode="reduce-overhead" if device.type == "cuda" else None)
    if device.type != "cpu":
        return fast

    def run(*inputs):
        enabled, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
        try:
            return fast(*inputs)
        finally:
            torch.backends.mkldnn.enabled = enabled
    return run


def check_fits(model, task, args, device):
    """A one-line SystemExit naming the size flags if `model` (built on the meta device: sizes,
    no memory) cannot be trained in this machine's memory: weights, gradients, two optimizer
    moments and a batch of float inputs. Asked before anything is allocated: an allocator may
    grant far more than there is, and the process then dies without a word."""
    need = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    need += 4 * args.batch_size * (getattr(task, "seq_len", 1) or 1) * task.n_in
    try:
        have = torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else next(
            int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    except (OSError, StopIteration):
        return
    if need > have:
        raise SystemExit(f"error: the model does not fit in memory with --hidden-size "
                         f"{args.hidden_size} --layers {args.layers} --batch-size "
                         f"{args.batch_size} ({need / 2**30:,.1f} GiB for its weights, gradients "
                         f"and optimizer state; {have / 2**30:,.1f} GiB here)")


def hardware(device):
    """The GPU's name, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                     if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def git_commit():
    """HEAD of this repository, with "-dirty" if tracked files changed; "unknown" outside git."""
    git = lambda *a: subprocess.run(["git", *a], cwd=os.path.dirname(os.path.abspath(__file__)),
                                    capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain",
                                                           "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def benchmark(step_fn, device, repeats=3, memory=True):
    """(seconds per call of step_fn(), one forward+backward; MiB). Memory, in a call of its own
    after a warm-up and before the timed calls: on CUDA the peak allocated; on CPU the tensors
    autograd saves for backward, each storage once (the hook costs Python time per tensor, so no
    timed call has it). memory=False: the timed calls alone, MiB None; repeats=0: seconds None."""
    mem = None
    if memory:
        step_fn()  # warm-up
        mem = _step_mib(step_fn, device)
    if repeats == 0:
        return None, mem
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()  # earlier queued work is not this call's
    start = time.perf_counter()
    for _ in range(repeats):
        step_fn()
    sync()
    return (time.perf_counter() - start) / repeats, mem


def _step_mib(step_fn, device):
    """Memory of one call of step_fn, in MiB (see `benchmark`)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step_fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    saved = {}

    def pack(t):
        try:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step_fn()
    return sum(saved.values()) / 2**20


# ----------------------------------------------------------------------------------------------
# The run harness. Each script's main() holds its training loop and makes these calls:
#
#     run = tasks.Run("sab.py", args, argv)                    # files, refusals, lock, Ctrl-C
#     run.start(model, task, device, opt=opt, scaler=scaler)   # --resume: the last state
#     while run.training():
#         ... one optimizer update on task.train_batch(run.step) ...
#         run.step_done(loss, grad_norm=norm, lr=lr)  # CSV log, Ctrl-C, timed checkpoints
#         if run.eval_due():
#             run.log(evaluate(...))                  # history, best and last checkpoints
#     model.load_state_dict(run.best_weights())
#     return run.finish(evaluate(test), evaluate(valid), paper=...)   # the results record

class Run:
    """One training run: its files, lock, resume, signals, log and results record. Files under
    --out-dir for the run name <script>-<task>-<model>-<tag>: ckpt/<name>.pt (the last state:
    weights, optimizer, RNG, step, history, `extra`), ckpt/<name>-best.pt (the weights at the
    best validation metric), ckpt/<name>.lock (locked while the run lives), <name>.csv (a row per
    step: time, loss and the script's fields, e.g. the gradient norm and learning rate; the
    validation metrics at evaluation steps) and <name>[-test<T'>].json (the results record).
    What it guarantees: docs/reproduce.md. Every refusal and failure is a SystemExit with a
    one-line message."""
    active = None  # the run of this process (run_main closes it on an error)

    def __init__(self, script, args, argv=None):
        self.script, self.args, self.bar, self.diverged, self.model = script, args, *[None] * 3
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.name = f"{script[:-3]}-{args.task}-{args.model}-{args.tag}"
        ckpt, T = os.path.join(args.out_dir, "ckpt", self.name), args.test_seq_len or args.seq_len
        self.last_path, self.best_path = ckpt + ".pt", ckpt + "-best.pt"
        self.csv_path = os.path.join(args.out_dir, self.name + ".csv")
        self.json_path = self.csv_path[:-4] + (f"-test{T}" if T != args.seq_len else "") + ".json"
        done = next((p for p in (self.last_path, self.json_path) if os.path.exists(p)), None)
        if done and not (args.resume or args.eval_only or args.restart):
            raise SystemExit(f"error: run {self.name} exists ({done}): add --resume to continue "
                             f"it, or --restart to start it over")
        if args.resume and not os.path.exists(self.last_path):
            raise SystemExit(f"error: no checkpoint {self.last_path} to resume from (check "
                             f"--task, --model, --tag / --seq-len / --quick and --out-dir)")
        if args.eval_only and not os.path.exists(self.best_path):
            raise SystemExit(f"error: --eval-only: no best checkpoint {self.best_path} (train "
                             f"the run first)")
        if Run.active is not None:  # an earlier run of this process, ended by an exception
            Run.active.close()
        try:  # the lock is held while this process lives; the system releases it if it dies
            os.makedirs(os.path.dirname(ckpt), exist_ok=True)
            self.lock = open(ckpt + ".lock", "a")
        except OSError as e:
            raise SystemExit(f"error: --out-dir {args.out_dir} is not writable ({e.strerror})")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock.close()
            raise SystemExit(f"error: run {self.name} is already running ({self.lock.name} is "
                             f"locked); wait for it or use another --tag")
        Run.active = self
        for path in (self.last_path, self.best_path, self.json_path, self.csv_path):
            if args.restart and os.path.exists(path):
                os.remove(path)
        self.step, self.best, self.history, self.elapsed = 0, None, [], 0.0
        self.rows, self.interval = [], []  # steps not yet in the CSV; since the last evaluation
        self.interrupted = self.saved_step = self.bad = self.expect = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)

    def start(self, model, task, device, extra=None, meta=None, **state):
        """Attaches the model and `state` (objects with state_dict(), saved with it: optimizer,
        scaler, scheduler), restores the last checkpoint with --resume or --eval-only and prints
        the run's header. `extra`: plain values kept across steps (a carried hidden state), saved
        and restored as run.extra; `meta`: written into both checkpoints (e.g. for a loader)."""
        self.model, self.task, self.device, self.state = model, task, device, state
        self.extra, self.meta, (self.metric, self.larger) = extra or {}, meta or {}, SELECT[task.kind]
        if os.path.exists(self.last_path) and (self.args.resume or self.args.eval_only):
            self._restore(self._read(self.last_path))
        print(f"== {self.script} | task: {task.description}\n== config: " + " ".join(
            f"{k}={v}" for k, v in sorted(vars(self.args).items())) + f"\n== device: {device} ("
            f"{hardware(device)}), seed={self.args.seed}, params="
            f"{sum(p.numel() for p in model.parameters()):,}"
            + (f", resumed at step {self.step}" if self.step else ""))
        self.t_start, self.last_save, self.checked = time.time() - self.elapsed, *[time.time()] * 2
        self.bar = tqdm(total=self.args.steps, initial=self.step, mininterval=5, desc=self.name,
                        disable=not self.training(), dynamic_ncols=True)

    def stop_reason(self):
        """Why training stops now ("steps", "stop_at", "time budget", "diverged"), or None."""
        a = self.args
        return ("diverged" if self.diverged else "steps" if self.step >= a.steps else
                "time budget" if a.time_budget and time.time() - self.t_start > a.time_budget * 60
                else "stop_at" if a.stop_at is not None and self.best is not None and (
                    self.best >= a.stop_at if self.larger else self.best <= a.stop_at) else None)

    def training(self):
        return not self.args.eval_only and self.stop_reason() is None

    def eval_due(self):
        """At every --eval-every steps, at the last step and when the time budget ends."""
        return not self.diverged and (self.step % self.args.eval_every == 0
                                      or self.stop_reason() in ("steps", "time budget"))

    def step_done(self, loss, **fields):
        """Counts an optimizer update and logs its row (loss and `fields`, tensors or numbers)
        with no host synchronisation: the values stay on their device until every few seconds, an
        evaluation, a checkpoint or a signal; then a non-finite loss ends training at the step it
        occurred. Writes a checkpoint every --checkpoint-minutes; on SIGINT or SIGTERM writes
        one and exits 130 with the command that resumes."""
        self.step += 1
        loss = loss.detach().float()
        first = ~torch.isfinite(loss) & (self.bad[0] < 0 if self.bad else True)
        self.bad = (torch.where(first, self.step, self.bad[0] if self.bad else -1),
                    torch.where(first, loss, self.bad[1] if self.bad else 0.0))
        self.rows.append(dict(step=self.step, seconds=round(time.time() - self.t_start, 3),
                              loss=loss, **fields))
        self.bar.update(1)
        now, timer = time.time(), time.time() - self.last_save > self.args.checkpoint_minutes * 60
        if not (self.interrupted or timer or self.eval_due() or now - self.checked > 5):
            return
        self.checked = now
        if not self._settle():
            return
        self._expect(now)
        if self.interrupted and self.save_last():
            cmd = " ".join(["python", self.script, *(a for a in self.argv if a != "--restart")]
                           + ([] if "--resume" in self.argv else ["--resume"]))
            self._fail(f"{self.interrupted}: checkpoint of step {self.step} written to "
                       f"{self.last_path}; to continue: {cmd}", code=130)
        if timer and not self.eval_due():
            self.save_last()  # (an evaluation step writes its checkpoint in log())

    def log(self, metrics, **fields):
        """Records an evaluation (`metrics`: evaluate()'s; `fields`: more for the history): the
        history entry (the means of the logged fields since the last one, the last loss), the
        best and last checkpoints, the CSV rows; prints one line."""
        value = metrics[self.metric]
        if not self._settle():
            return
        if not math.isfinite(value):
            return self._diverged(f"non-finite {self.metric} {value} at step {self.step}")
        if self.rows:
            self.rows[-1].update(metrics)  # the CSV row of this step gets them
        logged = {k: [r[k] for r in self.interval] for k in (self.interval or [{}])[-1]}
        entry = dict(step=self.step, seconds=round(time.time() - self.t_start, 1), **{
            k: sum(v) / len(v) for k, v in logged.items() if k not in ("step", "seconds")})
        if logged:
            entry["loss"] = logged["loss"][-1]
        if "grad_norm" in logged:  # how large, and how often clipped
            norms = logged["grad_norm"]
            entry.update(grad_norm_max=max(norms), clipped=sum(
                n > self.args.clip for n in norms) / len(norms) if self.args.clip else 0.0)
        self.history.append({**entry, **fields, **metrics})
        self.interval = []
        if self.best is None or (value > self.best if self.larger else value < self.best):
            self.best = value
            self._save(self.best_path, dict(model=self.model.state_dict(), step=self.step,
                                            **self.meta))
        if self.save_last():
            self.bar.write(f"step {self.step}: " + " ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in self.history[-1].items() if k not in ("step", "seconds"))
                + f" (best {self.metric} {self.best:.4f}, {self.elapsed / 60:.1f} min)")

    def save_last(self):
        """Appends the pending rows to the CSV log (rows past a checkpoint go on resume) and
        writes the last-state checkpoint; False, and nothing written, if a weight is not finite."""
        if not self._settle():
            return False
        if not all(torch.isfinite(p).all() for p in self.model.state_dict().values()
                   if p.is_floating_point()):
            self._diverged(f"non-finite weights at step {self.step}")
            return False
        if self.rows:
            new = not os.path.exists(self.csv_path) or not os.path.getsize(self.csv_path)
            with open(self.csv_path, "a", newline="") as f:
                out = csv.DictWriter(f, [*self.rows[0], *(f"valid_{m}" for m in COLUMNS[
                    self.task.kind])], extrasaction="ignore")
                out.writeheader() if new else None
                out.writerows(self.rows)
        self.rows, self.elapsed = [], time.time() - self.t_start
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        self._save(self.last_path, dict(
            model=self.model.state_dict(), rng=rng, step=self.step, best=self.best,
            history=self.history, interval=self.interval, elapsed=self.elapsed,
            config=vars(self.args), extra=self.extra, **self.meta,
            **{k: v.state_dict() for k, v in self.state.items()}))
        self.saved_step, self.last_save = self.step, time.time()
        return True

    def best_weights(self):
        """The weights (a state dict) of the best validation checkpoint."""
        ck = self._read(self.best_path)
        self.best_step = ck["step"]
        return ck["model"]

    def finish(self, test, valid, paper, **fields):
        """Writes the results record of the best checkpoint's tests (`test`, `valid`: evaluate()'s
        metrics) and returns it; after a divergence then exits with the error."""
        self.bar.close()
        peak = (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        record = dict(
            script=self.script, config=vars(self.args), task=self.task.description,
            metric=self.metric.replace("valid", "test"), paper=paper, metrics={**test, **valid},
            best_step=self.best_step, steps_done=self.step, stopped=self.stop_reason(),
            history=self.history, wall_seconds=self.elapsed, csv_log=os.path.basename(
                self.csv_path), peak_memory_mb=peak, device=str(self.device),
            hardware=hardware(self.device), torch=torch.__version__, git_commit=git_commit(),
            command=" ".join(["python", self.script, *self.argv]), **fields,
            **({"diverged": self.diverged} if self.diverged else {}))
        print(f"== test at best validation step {self.best_step}: " + " ".join(
            f"{k} {v:.4f}" for k, v in test.items()) + f" | paper: {paper} | training stopped "
            f"by: {record['stopped']} | peak memory {peak:.0f} MiB")
        try:
            write_results(self.json_path, record)
        except OSError as e:  # a full disk: the checkpoints are kept, --eval-only writes it later
            if os.path.exists(self.json_path + ".tmp"):
                os.remove(self.json_path + ".tmp")
            self._fail(f"could not write {self.json_path} ({e.strerror}); the test above is this "
                       f"run's; once there is space, the same command with --eval-only writes it")
        print(f"== wrote {self.json_path}")
        if self.diverged and not self.args.eval_only:
            self._fail(f"{self.diverged}: the run diverged and stops; nothing of that state is "
                       f"saved. The checkpoint on disk: {self._on_disk()}; the results file "
                       f"records the test of the best validation checkpoint")
        self.close()
        return record

    def close(self):
        """Ends the progress bar and releases the lock (finish() calls it)."""
        Run.active = None if Run.active is self else Run.active
        if self.bar is not None:
            self.bar.close()
        if not self.lock.closed:
            if os.path.exists(self.lock.name):  # removed while held: no one else has it open
                os.remove(self.lock.name)
            self.lock.close()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    # -- internals --------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self.interrupted or self.bar is None or not self.training():  # a second signal, or
            self.close()                                                  # outside the loop
            raise SystemExit(f"{name}: stopped; the checkpoint on disk is {self._on_disk()}")
        self.interrupted = name  # handled after the current step, in step_done

    def _on_disk(self):
        return "none yet" if self.saved_step is None else f"{self.last_path} (step {self.saved_step})"

    def _settle(self):
        """Brings the pending rows' values to the host (one synchronisation) and, at the first
        non-finite loss, ends training there (_diverged). False once diverged."""
        rows = [r for r in self.rows if torch.is_tensor(r["loss"])]
        if rows:
            keys = [k for k, v in rows[0].items() if torch.is_tensor(v)]
            values = torch.stack([torch.stack([r[k].float() for k in keys]) for r in rows])
            for r, v in zip(rows, values.tolist()):
                r.update(zip(keys, v))
            self.interval += [dict(r) for r in rows]
        if not self.diverged and self.bad is not None and int(self.bad[0]) >= 0:
            self.step = int(self.bad[0])  # the steps after it are not this run's result
            self.rows = [r for r in self.rows if r["step"] < self.step]
            self._diverged(f"non-finite loss {float(self.bad[1])} at step {self.step}")
        return not self.diverged

    def _expect(self, now):
        """One line, once, about 20 s into training (timed from the first check, after the
        warm-up): the speed here and how long the steps left take at it."""
        if self.expect is None:
            self.expect = (now, self.step)
        elif self.expect and now - self.expect[0] >= 20:
            rate = (self.step - self.expect[1]) / (now - self.expect[0])
            self.expect = False
            self.bar.write(f"== {rate:.2f} steps/s here: the {self.args.steps - self.step} steps "
                           f"left take about {(self.args.steps - self.step) / rate / 60:.0f} min"
                           + (f" (--stop-at {self.args.stop_at} may end the run earlier)"
                              if self.args.stop_at is not None else ""))

    def _diverged(self, why):
        """A non-finite loss, metric or weight: nothing of this state is saved. With a best
        checkpoint, training stops and finish() tests it (a baseline that diverges has a result)
        and then exits with the error; without one, the run ends here."""
        if self.diverged is None and self.best is not None and os.path.exists(self.best_path):
            self.diverged = why
            if os.path.exists(self.last_path):  # so that --resume and --eval-only know it
                self._save(self.last_path, {**self._read(self.last_path), "diverged": why})
            return self.bar.write(f"{why}: the run diverged; testing its best checkpoint")
        self._fail(f"{why}: the run diverged and stops; nothing of this state is saved. The "
                   f"checkpoint on disk: {self._on_disk()}")

    def _fail(self, message, code=1):
        self.close()  # the progress bar ends before the message
        if code == 1:
            raise SystemExit(f"error: {message}")
        print(message, file=sys.stderr)
        raise SystemExit(code)

    def _save(self, path, state):
        """save_checkpoint; a failed write (a full disk) keeps the old file and ends the run."""
        try:
            save_checkpoint(path, state)
        except OSError as e:
            if os.path.exists(path + ".tmp"):
                os.remove(path + ".tmp")
            self._fail(f"could not write {path} ({e.strerror}); the checkpoint on disk: "
                       f"{self._on_disk()}")

    def _read(self, path):
        try:
            ck = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # missing, truncated, empty or not a torch file
            self._fail(f"cannot read checkpoint {path} ({type(e).__name__}); delete it or use "
                       f"--restart")
        if not isinstance(ck, dict) or "model" not in ck or "step" not in ck:
            self._fail(f"{path} is not a checkpoint of {self.script}; delete it or use --restart")
        return ck

    def _restore(self, ck):
        """The state of a last checkpoint, refusing flags that differ from its own (those that
        shape the computation; a flag it does not know passes) and a model it does not fit."""
        now, then = vars(self.args), ck.get("config", {})
        changed = [k for k in sorted(now) if k in then and k not in RESUMABLE | {"tag"}
                   and now[k] != then[k]]
        if changed:
            self._fail("--resume with flags that differ from the checkpoint's: " + ", ".join(
                f"--{k.replace('_', '-')} {now[k]} (checkpoint: {then[k]})" for k in changed))
        try:
            self.model.load_state_dict(ck["model"])
            for k, v in self.state.items():
                v.load_state_dict(ck[k])
        except (KeyError, RuntimeError, ValueError) as e:
            lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [repr(e)]
            self._fail(f"{self.last_path} does not fit this model ({lines[min(1, len(lines) - 1)]}"
                       f"); delete it or use --restart")  # line 2: the first mismatch
        torch.set_rng_state(ck["rng"]["torch"].cpu())  # map_location moved it to the device
        if ck["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"]])
        self.step, self.best, self.history, self.elapsed, self.interval, self.extra = (
            ck[k] for k in ("step", "best", "history", "elapsed", "interval", "extra"))
        self.diverged, self.saved_step = ck.get("diverged"), self.step
        if os.path.exists(self.csv_path):  # the rows of steps after the checkpoint's go
            with open(self.csv_path, newline="") as f:
                rows = list(csv.reader(f))[:self.step + 1]
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerows(rows)


def save_checkpoint(path, state):
    """torch.save, atomically: a killed process leaves the old file or the new one."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def write_results(path, record):
    """Writes one run's JSON record atomically; returns the path."""
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
    return path


GRAD_FLOW_DISTANCES = (1, 10, 100, 1000, 5000)


def grad_flow_report(curves, path):
    """Prints how far back each model's gradient reaches and writes the curves as CSV.

    curves: {label: (T,) tensor}, the norm ||dL/dh_t|| over the batch for t = 1..T (a script's
    grad_flow). The table gives, at the distances T - t in GRAD_FLOW_DISTANCES shorter than T,
    the norm relative to that of the last step (distance 0), and that norm itself; a part of a
    curve, labelled "<label> (<part>)" after the curve <label>, is relative to that curve's last
    step. The CSV at `path` has one row per label and step: label, t, distance, grad_norm,
    relative (blank where the reference is 0). Returns path."""
    T = max(len(c) for c in curves.values())
    ds = [d for d in GRAD_FLOW_DISTANCES if d < T]
    print(f"||dL/dh_t|| at distance T - t, relative to the last step (T = {T}):")
    print(f"| model | {' | '.join(f'd = {d}' for d in ds)} | at d = 0 |")
    print("|---|" + "---|" * (len(ds) + 1))
    rows = ["label,t,distance,grad_norm,relative"]
    for label, c in curves.items():
        ref = float(curves.get(label.split(" (")[0], c)[-1])
        c, n = c.double().cpu().tolist(), len(c)
        rel = [v / ref if ref else None for v in c]
        print(f"| {label} | " + " | ".join(f"{rel[n - 1 - d]:.3g}" if d < n and ref else "n/a"
                                           for d in ds) + f" | {c[-1]:.3g} |")
        rows += [f"{label},{t + 1},{n - 1 - t},{v!r},{'' if r is None else repr(r)}"
                 for t, (v, r) in enumerate(zip(c, rel))]
    return write_lines(path, rows)


def write_lines(path, lines):
    """Writes `lines` (CSV rows, header first) to path, making its folder; prints and returns
    path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"== wrote {path}")
    return path


def best_weights(script, args):
    """The weights (state dict) of the best checkpoint of the run that args name (script,
    --task, --model, --tag, --out-dir), without locking it; a one-line SystemExit if missing."""
    path = os.path.join(args.out_dir, "ckpt",
                        f"{script[:-3]}-{args.task}-{args.model}-{args.tag}-best.pt")
    if not os.path.exists(path):
        raise SystemExit(f"error: --eval-only: no best checkpoint {path} (train the run first)")
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def run_main(main):
    """A script's entry point: main(), where an allocation failure (a model, a batch, an
    evaluation) or a DataError is a one-line error saying what to change; checkpoints are kept."""
    try:
        return main()
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    except (RuntimeError, MemoryError) as e:
        text = str(e)
        if not (isinstance(e, MemoryError) or "allocat" in text or "out of memory" in text
                or "size calculation overflow" in text):  # CUDA: a size past 2^63 bytes
            raise
        detail, run = f"({type(e).__name__}: {text.splitlines()[0][:120]})", Run.active
        if run is not None and run.model is None:  # while building the model
            raise SystemExit(f"error: the model does not fit in memory with --hidden-size "
                             f"{run.args.hidden_size} --layers {run.args.layers} --batch-size "
                             f"{run.args.batch_size} {detail}") from None
        raise SystemExit(f"error: out of memory {detail}: lower --batch-size, --eval-size or "
                         f"--hidden-size (the checkpoints on disk are kept)") from None
    finally:  # end the progress bar before the error line is printed
        if Run.active is not None:
            Run.active.close()
