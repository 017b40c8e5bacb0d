"""What the three scripts share: tasks, metrics, the common CLI, the run harness, results tables.

No model code lives here. A task gives time-major batches, the same in every script:

    task = make_task("copy", seq_len=100, batch_size=64, data_dir="./data", seed=0)
    x, y = task.train_batch(step)   # a pure function of (seed, step): a resumed run sees the same
    for x, y in task.eval_batches("valid"): ...

x: LongTensor tokens (T, B) or FloatTensor (T, B, C); y: (T, B) tokens for per-step tasks (copy,
ptb, text8), (B,) labels for classification, (B,) floats for regression (adding).
`python tasks.py --help`: the results tables of finished runs.
"""
import argparse
import atexit
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
import zipfile

import torch
import torch.nn.functional as F
from tqdm import tqdm

PMNIST_SEED = 92916     # the one fixed pixel permutation of pMNIST, the same in every script
SPLIT_SEED = 1234       # which 5% of a training set is held out for validation
COPY_EVAL_SEEDS = {"valid": 10_001, "test": 10_002}  # fixed copy / adding evaluation sets


class DataError(RuntimeError):
    """A dataset is missing, cannot be downloaded, or fails its checksum; the message says what
    to do."""


# ----------------------------------------------------------------------------------------------
# Synthetic tasks: a fresh batch every training step, fixed seeded evaluation sets.

def copy_batch(batch_size, seq_len, generator):
    """Copy memory in the SAB layout (Ke et al. 2018, section 5.1): 10 digits from 1..8, T-1
    blanks (0), a marker 9, 10 blanks; the target is blanks (0) for T+10 steps, then the digits.
    Returns x, y: LongTensors (T+20, B), tokens 0..9 and 0..8."""
    B, T = batch_size, seq_len
    digits = torch.randint(1, 9, (10, B), generator=generator)
    x = torch.zeros(T + 20, B, dtype=torch.long)
    x[:10], x[T + 9] = digits, 9
    y = torch.zeros(T + 20, B, dtype=torch.long)
    y[T + 10:] = digits
    return x, y


def adding_batch(batch_size, seq_len, generator):
    """Adding problem (Hochreiter & Schmidhuber 1997; the IndRNN and SAB variant): channel 0
    holds U(0, 1) values, channel 1 marks one position in each half; the target is the sum of
    the two marked values. Returns x: FloatTensor (T, B, 2), y: FloatTensor (B,) in [0, 2].
    Raises ValueError for T < 2."""
    B, T = batch_size, seq_len
    if T < 2:
        raise ValueError(f"adding needs seq_len >= 2, got {T}")
    values = torch.rand(T, B, generator=generator)
    marker = torch.zeros(T, B)
    for low, high in ((0, T // 2), (T // 2, T)):
        marker[torch.randint(low, high, (B,), generator=generator), torch.arange(B)] = 1.0
    return torch.stack([values, marker], dim=2), (values * marker).sum(0)


def step_generator(seed, step):
    """A generator whose state depends on (seed, step) only, so a resumed run sees the same data."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class SyntheticTask:
    """Copy or adding: a fresh batch every step, fixed seeded valid/test sets of eval_size."""

    def __init__(self, name, seq_len, batch_size, seed, test_seq_len=None, eval_size=1000):
        self.name, self.seq_len, self.batch_size, self.seed = name, seq_len, batch_size, seed
        self.test_seq_len, self.eval_size = test_seq_len or seq_len, eval_size
        T, T_test = seq_len, self.test_seq_len
        if name == "copy":
            self.make, self.kind, self.n_in, self.n_out = copy_batch, "copy", 10, 9
            self.description = (
                f"copy (SAB layout): 10 digits from 1..8, T-1={T - 1} blanks, marker 9, 10 blanks;"
                f" length T+20={T + 20}; target: blanks then the digits; metric: accuracy and CE "
                f"on the last 10 steps; test T={T_test}")
        else:
            self.make, self.kind, self.n_in, self.n_out = adding_batch, "regress", 2, 1
            self.description = (
                f"adding: T={T}, 2 channels (U(0,1) values, marker), one marker in each half, "
                f"target = sum of the marked values, metric MSE (predicting 1 gives about 0.167); "
                f"test T={T_test}")

    def train_batch(self, step):
        return self.make(self.batch_size, self.seq_len, step_generator(self.seed, step))

    def eval_batches(self, split, limit=None):
        """(x, y) batches of a fixed set of `limit` (default eval_size) samples; the test split
        is at test_seq_len."""
        T = self.test_seq_len if split == "test" else self.seq_len
        g = torch.Generator().manual_seed(COPY_EVAL_SEEDS[split] + T)
        n = limit or self.eval_size
        for start in range(0, n, self.batch_size):
            yield self.make(min(self.batch_size, n - start), T, g)


# ----------------------------------------------------------------------------------------------
# Image classification as pixel sequences.

def _torchvision_dataset(cls, root, train):
    """torchvision's dataset, downloaded if missing; DataError naming the files otherwise."""
    from torchvision.datasets.utils import check_integrity
    try:
        return cls(root=root, train=train, download=True)
    except Exception as e:  # network errors, corrupted archives, ...
        where = os.path.join(root, "MNIST", "raw") if cls.__name__ == "MNIST" else root
        resources = getattr(cls, "resources", [])
        for name, md5 in resources:
            path = os.path.join(where, name)
            if os.path.exists(path) and not check_integrity(path, md5):
                raise DataError(f"{path} is corrupt (MD5 differs from the official file): "
                                f"delete it, or put the official file there") from e
            if path.endswith(".gz") and os.path.exists(path) and os.path.exists(path[:-3]):
                _check_extracted(path)  # e.g. a truncated copy that torchvision cannot read
        files = ", ".join(name for name, _ in resources) or cls.filename
        raise DataError(
            f"{cls.__name__} is missing from {os.path.abspath(root)} and could not be downloaded "
            f"({type(e).__name__}: {e}). Put the official files ({files}) into "
            f"{os.path.abspath(where)}, or run once with network access.") from e


def _check_extracted(archive):
    """DataError naming the file to delete if the copy torchvision extracted from `archive` (a
    verified .gz) differs from it: a changed pixel or label, or a truncated file."""
    with gzip.open(archive, "rb") as f, open(archive[:-3], "rb") as g:
        if f.read() != g.read():
            raise DataError(f"{archive[:-3]} differs from its verified archive "
                            f"{os.path.basename(archive)}: delete it (it is extracted again)")


def _check_mnist(ds, root, train):
    """Checks the official .gz archives of a split against their MD5 and what torchvision
    extracted from them (and loaded) against the archives: DataError naming the file to delete."""
    from torchvision.datasets.utils import check_integrity
    raw = os.path.join(root, "MNIST", "raw")
    for name, md5 in [r for r in ds.resources if r[0].startswith("train" if train else "t10k")]:
        archive = os.path.join(raw, name)
        if not check_integrity(archive, md5):
            raise DataError(f"{archive} is corrupt (MD5 differs from the official file): delete "
                            f"it and run again (it is downloaded), or put the official file there")
        _check_extracted(archive)


def holdout(n):
    """Splits n training samples into (indices kept for training, the 5% held out for
    validation), the same fixed split (seed SPLIT_SEED) in every script."""
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
        """Positions in 0..n-1 of the batch_size training samples of `step`. Raises DataError
        if a batch is larger than the training set (it would silently be the whole set)."""
        if self.batch_size > n:
            raise DataError(f"--batch-size {self.batch_size} is larger than the training set "
                            f"({n} samples)")
        epoch, i = divmod(step, n // self.batch_size)
        if self._epoch != epoch:
            self._epoch = epoch
            self._order = torch.randperm(n, generator=step_generator(self.seed, epoch))
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]


class ImageTask(EpochShuffle):
    """mnist, pmnist (784 steps x 1 channel) and cifar10 (1024 steps x 3 RGB channels).

    Pixels scaled to [0, 1], or with as_tokens=True the raw values 0..255 as tokens (for a pixel
    embedding). 5% of the training set is held out for validation (`holdout`); the test split is
    the official test set. Raises DataError (see `_torchvision_dataset`)."""

    def __init__(self, name, batch_size, data_dir, seed, as_tokens=False):
        import torchvision  # here, so that synthetic tasks need no torchvision
        self.name, self.batch_size, self.seed, self.as_tokens = name, batch_size, seed, as_tokens
        self.kind, self.n_out, self.vocab = "classify", 10, 256 if as_tokens else None
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.MNIST
        train, test = (_torchvision_dataset(cls, data_dir, t) for t in (True, False))
        if name == "cifar10":  # (N, 32, 32, 3) uint8 numpy -> (N, 1024, 3), row-major scan
            self.n_in, self.seq_len = 3, 1024
        else:                  # (N, 28, 28) uint8 -> (N, 784, 1)
            self.n_in, self.seq_len = 1, 784
            _check_mnist(train, data_dir, True)
            _check_mnist(test, data_dir, False)
        xs = [torch.as_tensor(d.data).reshape(len(d.data), self.seq_len, self.n_in)
              for d in (train, test)]
        ys = [torch.as_tensor(d.targets, dtype=torch.long) for d in (train, test)]
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
            end = min(start + self.batch_size, n)
            yield self._batch(x[start:end], y[start:end])


# ----------------------------------------------------------------------------------------------
# Character-level language modelling.

# Each PTB file: (name, md5). The raw URL is a byte-identical copy of Mikolov's simple-examples
# split at a fixed commit; the tarball, tried second, is the original distribution.
_PTB_TGZ = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
_PTB_RAW = ("https://raw.githubusercontent.com/arthurdehgan/IFT6135_assignment_2/"
            "191820cabc95c8d8af11d0bf3679207dd3b97e08/data/")
PTB_FILES = {"train": ("ptb.char.train.txt", "874909f99060142f6b88cc74c34baaa2"),
             "valid": ("ptb.char.valid.txt", "9e0fe5bec2a8bf43fd686dc23d5ab8bb"),
             "test": ("ptb.char.test.txt", "1f9a2d1afe00f76e8bfbe09a65439681")}
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"  # of `text8`


def checksum(path, algo):
    """Hex digest of a file (hashlib algorithm name, e.g. "md5")."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url, dest):
    """Downloads url to dest through dest.part, so that a broken download leaves no dest."""
    with urllib.request.urlopen(url, timeout=60) as r, open(dest + ".part", "wb") as f:
        shutil.copyfileobj(r, f)
    os.replace(dest + ".part", dest)


def verified(path, digest, algo="md5"):
    """True if `path` exists with the right checksum, False if it is missing; DataError if it
    exists corrupted."""
    if not os.path.exists(path):
        return False
    if checksum(path, algo) != digest:
        raise DataError(f"{path} fails its {algo} checksum (expected {digest}): the file is "
                        f"corrupted or truncated. Delete it and run again to download it.")
    return True


def ensure_ptb(data_dir):
    """{split: path} of the char-level PTB files in `<data_dir>/ptb/`, downloaded if missing.
    Raises DataError if they cannot be had or fail their MD5."""
    folder = os.path.join(data_dir, "ptb")
    os.makedirs(folder, exist_ok=True)
    paths = {s: os.path.join(folder, name) for s, (name, _) in PTB_FILES.items()}
    for split, (name, md5) in PTB_FILES.items():
        errors = []
        for url in (_PTB_RAW + name, _PTB_TGZ):
            if verified(paths[split], md5):
                break
            try:
                if url == _PTB_TGZ:  # the original tarball, which has moved before
                    tgz = os.path.join(folder, "simple-examples.tgz")
                    download(url, tgz)
                    with tarfile.open(tgz) as tar:
                        member = tar.extractfile(f"./simple-examples/data/{name}")
                        with open(paths[split], "wb") as f:
                            shutil.copyfileobj(member, f)
                else:
                    download(url, paths[split])
            except (OSError, KeyError, tarfile.TarError) as e:
                errors.append(f"{url}: {e}")
        if not os.path.exists(paths[split]):
            raise DataError(
                f"char-level Penn Treebank file {name} is missing from {folder} and could not be "
                f"downloaded ({'; '.join(errors)}). Put ptb.char.train.txt, ptb.char.valid.txt and "
                f"ptb.char.test.txt (Mikolov's simple-examples/data) into {folder}.")
        verified(paths[split], md5)
    return paths


def ensure_text8(data_dir):
    """The path of `<data_dir>/text8/text8` (100M characters), downloaded if missing; DataError
    if it cannot be had or fails its SHA-256."""
    folder = os.path.join(data_dir, "text8")
    path = os.path.join(folder, "text8")
    if verified(path, TEXT8_SHA256, "sha256"):
        return path
    os.makedirs(folder, exist_ok=True)
    try:
        if not os.path.exists(path + ".zip"):
            download(TEXT8_URL, path + ".zip")
        with zipfile.ZipFile(path + ".zip") as z:
            z.extract("text8", folder)
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"text8 is missing from {folder} and could not be downloaded from "
                        f"{TEXT8_URL} ({e}). Put the unzipped file `text8` into {folder}.") from e
    verified(path, TEXT8_SHA256, "sha256")
    return path


class CharLMTask:
    """Character-level language modelling: ptb (Mikolov's split) or text8 (90M/5M/5M).

    Each split is cut into B contiguous streams; batch i is the window [i*T, (i+1)*T) of every
    stream, so a hidden state may be carried from one batch to the next. Metric: bits per
    character (BPC) = cross-entropy in nats / ln 2. Raises DataError (see ensure_ptb)."""

    def __init__(self, name, seq_len, batch_size, data_dir):
        self.name, self.seq_len, self.batch_size, self.kind = name, seq_len, batch_size, "lm"
        if name == "ptb":  # space-separated characters; '_' marks word boundaries
            text = {s: [c for c in open(p).read().split(" ") if c]
                    for s, p in ensure_ptb(data_dir).items()}
        else:
            raw = open(ensure_text8(data_dir)).read()
            text = {"train": raw[:90_000_000], "valid": raw[90_000_000:95_000_000],
                    "test": raw[95_000_000:]}
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
        sizes = "/".join(str(len(text[s])) for s in ("train", "valid", "test"))
        self.description = (f"{name} (char level): vocab {self.vocab}, characters train/valid/test "
                            f"{sizes}, {batch_size} contiguous streams, windows of T={seq_len}; "
                            f"metric BPC")

    def windows(self, split):
        """Number of windows of T steps in one pass over a split."""
        return (self.streams[split].shape[1] - 1) // self.seq_len

    def _window(self, split, i):
        chunk = self.streams[split][:, i * self.seq_len:(i + 1) * self.seq_len + 1].t()  # (T+1, B)
        return chunk[:-1], chunk[1:]

    def train_batch(self, step):
        return self._window("train", step % self.windows("train"))

    def eval_batches(self, split, limit=None):
        n = self.windows(split) if limit is None else min(limit, self.windows(split))
        for i in range(n):
            yield self._window(split, i)


TASK_NAMES = ["copy", "adding", "mnist", "pmnist", "cifar10", "ptb", "text8"]


def make_task(name, seq_len=None, batch_size=64, data_dir="./data", seed=0, test_seq_len=None,
              as_tokens=False, eval_size=1000):
    """A shared task by name (TASK_NAMES; indrnn.py and rlstm.py add their own). seq_len is T of
    copy / adding / ptb / text8 (images have fixed lengths). Raises ValueError, DataError."""
    if name in ("copy", "adding"):
        return SyntheticTask(name, seq_len, batch_size, seed, test_seq_len, eval_size)
    if name in ("mnist", "pmnist", "cifar10"):
        return ImageTask(name, batch_size, data_dir, seed, as_tokens)
    if name in ("ptb", "text8"):
        return CharLMTask(name, seq_len, batch_size, data_dir)
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")


# Losses and metrics, one definition for every script.

def loss_and_stats(kind, out, y, stats=True):
    """Training loss and summable statistics for one batch.

    Args:
        kind: "copy" | "lm" (out (T, B, V), y (T, B)), "classify" (out (B, C), y (B,)),
              "regress" (out (B,) or (B, 1), y (B,)).
        stats: False skips the statistics (training steps need the loss only; each statistic
               is a device-to-host copy).
    Returns:
        loss: scalar tensor to backpropagate (mean CE in nats over all steps, or MSE).
        stats: dict of Python floats to add up over batches and pass to `summarize`, or None.
    Raises:
        ValueError: for an unknown kind.
    """
    if kind in ("copy", "lm"):
        T, B, V = out.shape
        ce = F.cross_entropy(out.float().reshape(T * B, V), y.reshape(T * B), reduction="none")
        ce = ce.view(T, B)
        loss = ce.mean()
        if not stats:
            return loss, None
        result = {"n": B, "ce_sum": ce.mean(0).sum().item()}
        if kind == "copy":  # the 10 recalled digits
            last = out[-10:].argmax(-1)
            result["last_ce_sum"] = ce[-10:].mean(0).sum().item()
            result["last_correct"] = (last == y[-10:]).float().mean(0).sum().item()
        return loss, result
    if kind == "classify":
        loss = F.cross_entropy(out.float(), y)
        if not stats:
            return loss, None
        return loss, {"n": len(y), "ce_sum": loss.item() * len(y),
                      "correct": (out.argmax(-1) == y).sum().item()}
    if kind == "regress":
        loss = F.mse_loss(out.float().reshape(-1), y)
        if not stats:
            return loss, None
        return loss, {"n": len(y), "se_sum": loss.item() * len(y)}
    raise ValueError(f"unknown task kind {kind!r}")


def summarize(kind, stats, prefix):
    """Turns summed statistics into metrics: `{prefix}_acc` (%), `_ce` (nats), `_mse`, `_bpc`."""
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


# Which metric picks the best checkpoint, and whether larger is better.
SELECT = {"copy": ("valid_acc", True), "classify": ("valid_acc", True),
          "regress": ("valid_mse", False), "lm": ("valid_bpc", False)}


# ----------------------------------------------------------------------------------------------
# Command line: the flags every script shares, spelled the same everywhere.

# Every numeric flag's valid range, in one place: argparse types that refuse anything else with a
# one-line usage error naming the flag. Integers stay below 2^31 and floats are finite and at most
# 1e6 in size, so that nothing that passes here overflows later (a seed, a size, a float32 lr).
INT_MAX, FLOAT_MAX = 2**31 - 1, 1e6


def _number(cast, low, high, what):
    def parse(s):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        if not (math.isfinite(v) and low(v) and v <= high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        return v
    return parse


positive_int = _number(int, lambda v: v > 0, INT_MAX, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, INT_MAX, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0, FLOAT_MAX, f"a number in (0, {FLOAT_MAX:g}]")
nonneg_float = _number(float, lambda v: v >= 0, FLOAT_MAX, f"a number in [0, {FLOAT_MAX:g}]")
probability = _number(float, lambda v: v >= 0, 1.0, "a number in [0, 1]")
fraction = _number(float, lambda v: v >= 0, 1.0 - 1e-9, "a number in [0, 1)")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only where it is one value for every task (the per-task
    defaults are in the epilog); keeps the epilog's table as written."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def defaults_epilog(defaults, per_task, quick, per_model=None):
    """The epilog of a script's --help: its defaults for every task, and what --quick sets."""
    def show(d):  # --flag value; a switch that is on: --flag; off: left out
        return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                        for k, v in d.items() if v is not False)
    lines = ["defaults for every task: " + show(defaults), "", "per task (override the above):"]
    lines += [f"  {task}: {show(d)}" for task, d in per_task.items()]
    if per_model:
        lines += ["", "per model and task:"]
        lines += [f"  {m} on {task}: {show(d)}" for (m, task), d in per_model.items()]
    lines += ["", "--quick sets (CPU scale, minutes):"]
    lines += [f"  {task}: {show(d)}" for task, d in quick.items()]
    return "\n".join(lines)


def common_parser(description, tasks, models, epilog=None):
    """argparse parser with the shared flags. Defaults of None are filled in per task by the
    script (listed in `epilog`, see defaults_epilog)."""
    p = argparse.ArgumentParser(description=description, epilog=epilog,
                                formatter_class=_HelpFormatter)
    a = p.add_argument
    a("--task", choices=tasks, default=tasks[0], help="the task to train on")
    a("--model", choices=models, default=models[0], help="the model to train")
    a("--seq-len", type=positive_int, help="T (default: the paper's for the task)")
    a("--test-seq-len", type=positive_int, help="evaluate the test set at this T (transfer)")
    a("--batch-size", type=positive_int, help="sequences per training batch")
    a("--hidden-size", type=positive_int, help="units per recurrent layer")
    a("--layers", type=positive_int, help="recurrent layers")
    a("--lr", type=positive_float, help="learning rate")
    a("--clip", type=nonneg_float, help="gradient-norm clip (0: none)")
    a("--steps", type=positive_int, help="training steps (optimizer updates)")
    a("--eval-every", type=positive_int, help="validate and checkpoint every N steps")
    a("--eval-size", type=positive_int,
      help="validation samples (copy, adding, images) or windows (ptb, text8) per evaluation")
    a("--test-size", type=positive_int,
      help="test on the first N samples (windows for ptb, text8) only (default: the whole test "
           "set; the --quick presets of slow tasks set it, and the results record it)")
    a("--time-budget", type=positive_float, help="stop training after this many minutes")
    a("--seed", type=nonneg_int, default=0, help="seed of the weights and the training data")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto",
      help="auto: cuda when torch sees a GPU")
    a("--amp", nargs="?", const="auto", default="off", choices=["off", "auto", "bf16", "fp16"],
      help="mixed precision under torch.autocast: bf16 where supported, else fp16 + GradScaler")
    a("--grad-checkpoint", action="store_true",
      help="recompute the forward pass in time segments (torch.utils.checkpoint)")
    a("--data-dir", default="./data", help="datasets are read (and downloaded) here")
    a("--out-dir", default="./results",
      help="results JSON here, checkpoints in its ckpt/ folder")
    a("--tag", help="name suffix of the result and checkpoint files (default: T<seq-len>"
                    "[-quick][-s<seed>][-<hash of the other flags that differ from the preset>])")
    a("--resume", action="store_true", help="continue from the last checkpoint of this run name")
    a("--restart", action="store_true",
      help="delete this run name's checkpoints and start over (without it an existing run is "
           "refused)")
    a("--eval-only", action="store_true",
      help="no training: test the best checkpoint of this run name (with --test-seq-len: at "
           "another T)")
    a("--checkpoint-minutes", type=positive_float, default=5.0,
      help="also write a checkpoint every this many minutes of wall time")
    a("--quick", action="store_true",
      help="CPU-scale preset that runs in minutes (what it sets per task: below)")
    a("--benchmark", action="store_true",
      help="time forward+backward and peak memory against nn.LSTM, then exit")
    a("--compile", action="store_true",
      help="compile the forward pass and loss of a training step with torch.compile (one graph, "
           "its backward compiled too; on CUDA with CUDA graphs); same results to float32 "
           "rounding, compiled once at the start")
    a("--threads", type=positive_int, default=1,
      help="torch CPU threads; the numbers of a run depend on it (rounding), so the default is "
           "the same on every machine")
    return p


def check_args(p, args):
    """The checks every script shares once its defaults are filled in: p.error, one line."""
    for flag, T in (("--seq-len", args.seq_len), ("--test-seq-len", args.test_seq_len)):
        if args.task == "adding" and T is not None and T < 2:
            p.error(f"{flag} {T}: adding needs T >= 2 (one marker in each half)")
    for flag, path in (("--data-dir", args.data_dir), ("--out-dir", args.out_dir)):
        if os.path.isfile(path):
            p.error(f"{flag} {path} is a file, not a folder")


def _allocating(fn, message):
    """fn(); an allocation failure (MemoryError, or an allocator's RuntimeError) becomes
    SystemExit with the one line `error: <message(detail)>`; any other error passes through."""
    try:
        return fn()
    except (RuntimeError, MemoryError) as e:
        text = str(e)
        if not (isinstance(e, MemoryError) or "allocat" in text or "out of memory" in text
                or "size calculation overflow" in text):  # CUDA: a size past 2^63 bytes
            raise
        raise SystemExit("error: " + message(
            f"({type(e).__name__}: {text.splitlines()[0][:120] if text else ''})"))


def build(make, args):
    """make() -> the model, on its device. A size too large to allocate is a one-line error that
    names the size flags instead of an allocator traceback."""
    return _allocating(make, lambda detail: (
        f"the model does not fit in memory with --hidden-size {args.hidden_size} --layers "
        f"{args.layers} --batch-size {args.batch_size} {detail}"))


def run_main(main):
    """Calls a script's main(); an allocation failure later on (a batch, an evaluation) is a
    one-line error naming the size flags, and so is a DataError (e.g. a batch larger than the
    training set). The checkpoints on disk are kept (see Run)."""
    try:
        return _allocating(main, lambda detail: (
            f"out of memory {detail}: lower --batch-size, --eval-size or --hidden-size (the "
            f"checkpoints on disk are kept)"))
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    finally:  # end the progress bar before the error line is printed
        if Run.active is not None:
            Run.active.close()


def setup(args, probe=None):
    """Threads, device, AMP and the seed of a run: returns (device, autocast dtype or None, use
    GradScaler). SystemExit for a device or an AMP mode this machine lacks.

    --device auto: the CPU without a GPU. With one, the faster of the two for this run when
    `probe` is given: probe(device, amp_dtype) returns a function that takes one training step
    (forward and backward) of this run there; the median of 3 timed steps, after a warm-up step,
    decides, and one line says which device and both times (a step loop of small operations can
    be faster on one CPU thread than on a GPU, which waits on kernel launches). The random state
    is restored, so the run is what --device would give. Without a probe (--benchmark), or with
    --compile (which is for CUDA graphs): the GPU."""
    torch.set_num_threads(args.threads)
    # Flush float32 values below 1.2e-38 to zero on CPU. Gradients that vanish through a long
    # LSTM reach that range, and arithmetic on such subnormal numbers is slow: adding at
    # T = 1000, nn.LSTM, one thread, 20 steps took 131 s with them and 17 s without, with the
    # same test MSE (docs/reproduce.md, "What a run does").
    torch.set_flush_denormal(True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if args.amp == "fp16" and args.device == "cpu":
        raise SystemExit("error: --amp fp16 needs a CUDA device; on CPU use --amp bf16")
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    if args.device == "auto" and device.type == "cuda" and probe and not args.compile:
        seconds = {}
        rng = torch.get_rng_state(), torch.cuda.get_rng_state_all()
        for d in (torch.device("cpu"), device):
            if args.amp != "fp16" or d.type == "cuda":
                seconds[d] = _seconds_per_step(probe(d, _amp(args, d)[0]), d)
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state_all(rng[1])
        device = min(seconds, key=seconds.get)
        print(f"== --device auto: {device.type}, the faster for this run: "
              + ", ".join(f"{t * 1e3:.1f} ms per training step on {hardware(d)}"
                          for d, t in seconds.items()))
    torch.manual_seed(args.seed)
    return (device, *_amp(args, device))


def _amp(args, device):
    """(autocast dtype or None, use GradScaler) of --amp on `device`."""
    amp = args.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    return {"off": (None, False), "bf16": (torch.bfloat16, False),
            "fp16": (torch.float16, True)}[amp]


def _seconds_per_step(step, device, repeats=3):
    """The median time of `repeats` calls of step() on `device`, after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2]


def compiled(fn, args, device):
    """fn, or with --compile torch.compile(fn, fullgraph=True): the forward pass and loss of a
    training step as one graph (an error, not a silent fallback, if it cannot be one), whose
    backward AOTAutograd compiles too. On CUDA with mode "reduce-overhead": CUDA graphs replay
    the step's kernels without a launch each. nn.LSTM / nn.RNN are traced into their cell-level
    operations (Dynamo's allow_rnn); on CPU with oneDNN off, whose fused LSTM cannot be compiled
    for training (PyTorch issue 158007)."""
    if not args.compile:
        return fn
    torch._dynamo.config.allow_rnn = True
    fast = torch.compile(fn, fullgraph=True,
                         mode="reduce-overhead" if device.type == "cuda" else None)
    if device.type != "cpu":
        return fast

    def run(*inputs):
        enabled, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
        try:
            return fast(*inputs)
        finally:
            torch.backends.mkldnn.enabled = enabled
    return run


# ----------------------------------------------------------------------------------------------
# Checkpoints and results.

def save_checkpoint(path, state):
    """torch.save, atomically: a killed run leaves either the old or the new file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def write_results(path, record):
    """Writes one run's JSON record atomically; returns the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
    return path


def hardware(device):
    """The GPU's name, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
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


def peak_memory_mb(device):
    """Peak CUDA memory allocated on a GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def benchmark(step_fn, device, repeats=3, memory=True):
    """Times `step_fn()` (one forward+backward): (seconds per call, MiB). On CUDA the memory is
    the peak allocated during a call; on CPU, the tensors autograd saves for backward (the
    activation memory that grows with T), each storage counted once. Memory is measured in a
    call of its own, after a warm-up call, before the `repeats` timed calls: the CPU hook costs
    Python time per saved tensor (10-25% of a step for an RNN of small operators).
    memory=False: the timed calls alone (no warm-up, no memory call); MiB is None.
    repeats=0: the warm-up and the memory call alone; seconds is None."""
    mem = None
    if memory:
        step_fn()  # warm-up
        mem = _step_mib(step_fn, device)
    if repeats == 0:
        return None, mem
    if device.type == "cuda":
        torch.cuda.synchronize()  # earlier queued work is not this call's
    start = time.perf_counter()
    for _ in range(repeats):
        step_fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
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
# The run harness: the bookkeeping around each script's training loop (which stays in the script).
#
#     run = tasks.Run("sab.py", args, task, model, dict(opt=opt, scaler=scaler), device)
#     while run.training():
#         ... one optimizer update on task.train_batch(run.step) ...
#         run.step_done(loss)
#         if run.eval_due():
#             run.log(evaluate(...))
#     return run.finish(lambda split, limit: evaluate(...), paper=...)
#
# What a run guarantees: checkpoints are written atomically; a checkpoint with non-finite weights
# or validation metric is never written; Ctrl-C or SIGTERM writes a checkpoint of the current step
# and prints the command that resumes; a checkpoint is also written every --checkpoint-minutes; a
# run name is locked while its run lives; an existing run is never overwritten without --restart;
# --resume refuses changed flags.

# Flags that may differ on --resume: when and how long a run goes, where it reads and writes.
# Every other flag shapes the model, the data or the optimizer and must match the checkpoint.
# (ss_steps: rlstm.py's scheduled-sampling ramp, which defaults to --steps; unconfirmed: its list
# of the flags left at an UNCONFIRMED default, derived from the others, --steps included)
RESUMABLE_FLAGS = {"steps", "ss_steps", "time_budget", "eval_every", "test_size", "test_seq_len",
                   "resume", "restart", "eval_only", "threads", "device", "data_dir", "out_dir",
                   "checkpoint_minutes", "grad_checkpoint", "quick", "benchmark", "unconfirmed",
                   "stop_at", "steps_like", "compile"}


def default_tag(base, args, parse_args, argv=None):
    """The tag of a run name when --tag is not given: `base` (for example T<seq_len>[-quick]),
    then -s<seed> for a seed other than 0 and -<6 hex digits>, a hash of the flags that shape the
    computation (all but RESUMABLE_FLAGS) and differ from the preset the same --task, --model,
    --quick and --seq-len give. So two configurations never share a run name, and the preset's
    own runs keep short names. parse_args: the script's; argv: its command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    preset = ["--task", args.task, "--model", args.model, "--tag", "preset"]
    preset += ["--quick"] if args.quick else []
    if any(a == "--seq-len" or a.startswith("--seq-len=") for a in argv):
        preset += ["--seq-len", str(args.seq_len)]
    try:  # quietly: a --seq-len may not fit the preset's other defaults (argparse would print)
        with contextlib.redirect_stderr(io.StringIO()):
            defaults = vars(parse_args(preset))
    except SystemExit:
        defaults = {}  # then every flag counts: the hash names the whole configuration
    changed = {k: v for k, v in vars(args).items()
               if k not in RESUMABLE_FLAGS | {"tag", "seed"} and defaults.get(k) != v}
    tag = base + (f"-s{args.seed}" if args.seed else "")
    if changed:
        digest = hashlib.sha1(json.dumps(changed, sort_keys=True, default=str).encode())
        tag += "-" + digest.hexdigest()[:6]
    return tag


class Run:
    """One training run's files, resume, lock, signals and results record.

    Files under --out-dir, for the run name <script>-<task>-<model>-<tag>: ckpt/<name>.pt (the
    last state: model, `state` objects, RNG, step, history, `extra`), ckpt/<name>-best.pt (the
    model at the best validation metric), ckpt/<name>.lock (held while the run lives) and
    <name>[-test<T'>].json (the results record).

    model: the nn.Module; state: {name: object with state_dict()/load_state_dict()} saved with
    it (optimizer, GradScaler, scheduler); extra: plain values the script keeps across steps
    (e.g. a carried hidden state), saved and restored as `run.extra`; meta: written into both
    checkpoints (e.g. the network's config for a loader); added: {flag: value} for flags added
    after older checkpoints were written, with the value that reproduces those (a checkpoint
    without the flag has that value).
    Raises SystemExit with a one-line message for every refusal (existing run, locked run,
    unreadable or mismatching checkpoint, unwritable --out-dir).
    """
    active = None  # the run of this process, until close() (run_main closes it on an error)
    bar = None

    @staticmethod
    def paths(script, args):
        """(run name, ckpt folder, last checkpoint, best checkpoint) of a run."""
        name = f"{script[:-3]}-{args.task}-{args.model}-{args.tag}"
        folder = os.path.join(args.out_dir, "ckpt")
        return name, folder, *(os.path.join(folder, name + s) for s in (".pt", "-best.pt"))

    @staticmethod
    def preflight(script, args):
        """The refusals that need no data or model, for a script to call before it loads data:
        an unwritable --out-dir, --resume / --eval-only without a checkpoint, an existing run
        without --resume or --restart. SystemExit with a one-line message."""
        name, folder, last, best = Run.paths(script, args)
        if os.path.exists(last) and not (args.resume or args.eval_only or args.restart):
            raise SystemExit(f"error: run {name} exists ({last}): add --resume to continue it, "
                             f"or --restart to start it over")
        if args.resume and not os.path.exists(last):
            raise SystemExit(f"error: no checkpoint {last} to resume from (check --task, "
                             f"--model, --tag / --seq-len / --quick and --out-dir)")
        if args.eval_only and not os.path.exists(best):
            raise SystemExit(f"error: --eval-only: no best checkpoint {best} (train the run "
                             f"first)")
        try:
            os.makedirs(folder, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as e:
            raise SystemExit(f"error: --out-dir {args.out_dir} is not writable ({e.strerror})")

    def __init__(self, script, args, task, model, state, device, argv=None, extra=None,
                 meta=None, added=None):
        self.script, self.args, self.task, self.model, self.state = script, args, task, model, state
        self.device, self.meta, self.extra, self.added = device, meta or {}, extra or {}, added or {}
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.metric, self.larger_is_better = SELECT[task.kind]
        self.name, folder, self.last_path, self.best_path = Run.paths(script, args)
        self.step, self.best, self.history, self.elapsed = 0, None, [], 0.0
        self.saved_step = None      # the step of the last checkpoint on disk (None: none yet)
        self.interrupted = None     # the signal's name once SIGINT / SIGTERM arrived
        self.diverged = None        # why training stopped on a non-finite value (then finish()
        #                             tests the best checkpoint, records this and exits with it)
        self._handlers, self.lock_path = {}, None
        Run.preflight(script, args)  # again: the files may have changed since main() called it
        self._lock(folder)
        if args.restart:
            for path in (self.last_path, self.best_path):
                if os.path.exists(path):
                    os.remove(path)
        elif os.path.exists(self.last_path):  # preflight: only with --resume or --eval-only
            self._restore(self._read(self.last_path))
        print(f"== {script} | task: {task.description}")
        print("== config: " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))
        print(f"== device: {device} ({hardware(device)}), seed={args.seed}, params="
              f"{sum(p.numel() for p in model.parameters()):,}"
              + (f", resumed at step {self.step}" if self.step else ""))
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._handlers[sig] = signal.signal(sig, self._on_signal)
        self.t_start, self.last_save = time.time() - self.elapsed, time.time()
        self._bad_step = self._bad_loss = None  # see step_done
        self._shown = time.time()
        self.bar = tqdm(total=args.steps, initial=self.step, mininterval=5, desc=self.name,
                        disable=not self.training(), dynamic_ncols=True)

    # -- the training loop's calls ---------------------------------------------------------------
    def training(self):
        """True while the loop should take another step (steps and time budget left, and the
        validation metric short of --stop-at where a script has that flag)."""
        return (not self.args.eval_only and self.step < self.args.steps and not self.out_of_time()
                and not self.reached() and not self.diverged)

    def reached(self):
        """True once the best validation metric reached --stop-at (if the script has it)."""
        target = getattr(self.args, "stop_at", None)
        return target is not None and self.best is not None and (
            self.best >= target if self.larger_is_better else self.best <= target)

    def out_of_time(self):
        budget = self.args.time_budget
        return bool(budget) and time.time() - self.t_start > budget * 60

    def step_done(self, loss):
        """Counts an optimizer update without a host synchronisation: the loss stays on its
        device, where the first non-finite one is remembered. It is read at every evaluation,
        checkpoint and signal and every few seconds (with the progress bar), and a non-finite
        loss then ends training at the step it occurred (see _diverged). Writes a checkpoint
        every --checkpoint-minutes; on SIGINT / SIGTERM writes one and exits with the command
        that resumes."""
        self.step += 1
        loss = loss.detach()
        if self._bad_step is None:  # device scalars: the first non-finite step and its loss
            self._bad_step = torch.full((), -1, device=loss.device)
            self._bad_loss = torch.zeros((), device=loss.device)
        new = ~torch.isfinite(loss) & (self._bad_step < 0)
        self._bad_step = torch.where(new, self.step, self._bad_step)
        self._bad_loss = torch.where(new, loss.float(), self._bad_loss)
        self.bar.update(1)
        now = time.time()
        timer = now - self.last_save > self.args.checkpoint_minutes * 60
        if not (self.interrupted or timer or self.eval_due() or now - self._shown > 5):
            return
        self._shown = now
        bad = int(self._bad_step)  # the host synchronisation, every few seconds at most
        if bad >= 0:
            self.step = bad  # what trained after it is not this run's result
            return self._diverged(f"non-finite loss {float(self._bad_loss)} at step {bad}")
        self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        if self.interrupted:
            if not self.save_last():
                return  # diverged: finish() tests the best checkpoint
            cmd = " ".join(["python", self.script] + [a for a in self.argv if a != "--restart"]
                           + ([] if "--resume" in self.argv else ["--resume"]))
            self._fail(f"{self.interrupted}: checkpoint of step {self.step} written to "
                       f"{self.last_path}; to continue: {cmd}", code=130)
        if timer and not self.eval_due():
            self.save_last()  # (an evaluation step writes its checkpoint in log())

    def eval_due(self):
        """True at every --eval-every steps, at the last step and when the time budget ends."""
        return not self.diverged and (self.step % self.args.eval_every == 0
                                      or self.step == self.args.steps or self.out_of_time())

    def log(self, val, **fields):
        """Records an evaluation (`val`: the metrics of evaluate(); `fields`: anything else for
        the run history), writes the best and last checkpoints, prints one line."""
        value = val[self.metric]
        if not math.isfinite(value):
            return self._diverged(f"non-finite {self.metric} {value} at step {self.step}")
        if not self._check_finite():  # before either checkpoint is written
            return
        self.elapsed = time.time() - self.t_start
        self.history.append(dict(step=self.step, seconds=round(self.elapsed, 1), **fields, **val))
        if self.best is None or (value > self.best if self.larger_is_better else value < self.best):
            self.best = value
            self._save(self.best_path, dict(model=self.model.state_dict(), step=self.step,
                                            **self.meta))
        self._write_last()
        self.bar.write(f"step {self.step}: " + " ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in
            {**fields, **val}.items()) + f" (best {self.metric} {self.best:.4f}, "
            f"{self.elapsed / 60:.1f} min)")
        if self.out_of_time():
            self.bar.write(f"time budget of {self.args.time_budget} min reached at step "
                           f"{self.step}")
        if self.reached():
            self.bar.write(f"--stop-at {self.args.stop_at} reached at step {self.step}")

    def save_last(self):
        """Writes the last-state checkpoint; False (and nothing written) if a weight is not
        finite."""
        if not self._check_finite():
            return False
        self._write_last()
        return True

    def finish(self, evaluate, paper, **fields):
        """Tests the model of the best validation checkpoint and writes the results record.
        evaluate(split, limit) -> metrics dict. Returns the record (also written as JSON). After
        a divergence the record says so (`diverged`) and the run then exits with the error."""
        self.bar.close()
        ck = self._read(self.best_path)
        self.model.load_state_dict(ck["model"])
        t_test = time.time()
        test = evaluate("test", self.args.test_size)
        test_seconds = time.time() - t_test
        val = evaluate("valid", self.args.eval_size)
        args = self.args
        record = dict(
            script=self.script, config=vars(args), task=self.task.description,
            metric=self.metric.replace("valid", "test"), paper=paper, metrics={**test, **val},
            best_step=ck["step"], steps_done=self.step, history=self.history,
            wall_seconds=self.elapsed, test_seconds=test_seconds,
            peak_memory_mb=peak_memory_mb(self.device), device=str(self.device),
            hardware=hardware(self.device), torch=torch.__version__, git_commit=git_commit(),
            command=" ".join(["python", self.script] + self.argv), **fields,
            **({"diverged": self.diverged} if self.diverged else {}))
        test_T = args.test_seq_len or args.seq_len
        suffix = f"-test{test_T}" if test_T != args.seq_len else ""
        print(f"== test at best validation step {ck['step']}: "
              + " ".join(f"{k} {v:.4f}" for k, v in test.items()) + f" | paper: {paper}"
              + f" | test {test_seconds:.0f} s, peak memory {record['peak_memory_mb']:.0f} MiB")
        path = os.path.join(args.out_dir, self.name + suffix + ".json")
        try:
            write_results(path, record)
        except OSError as e:  # a full disk: the checkpoints are kept, --eval-only writes it later
            if os.path.exists(path + ".tmp"):
                os.remove(path + ".tmp")
            self._fail(f"could not write {path} ({e.strerror}); the test above is this run's; "
                       f"once there is space, the same command with --eval-only writes it")
        print(f"== wrote {path}")
        if self.diverged and not args.eval_only:
            self._diverged(self.diverged, final=True)
        self.close()
        return record

    def close(self):
        """Ends the progress bar, releases the lock and the signal handlers (finish() calls
        it)."""
        atexit.unregister(self.close)
        if Run.active is self:
            Run.active = None
        if self.bar is not None:
            self.bar.close()
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers = {}
        if self.lock_path and os.path.exists(self.lock_path):
            os.remove(self.lock_path)
        self.lock_path = None

    # -- internals --------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        if self.interrupted or not self.training():  # a second signal, or outside the loop
            self.close()
            raise SystemExit(f"{signal.Signals(signum).name}: stopped; the checkpoint on disk is "
                             f"{self._on_disk()}")
        self.interrupted = signal.Signals(signum).name  # handled after the current step

    def _on_disk(self):
        step = self.saved_step
        return "none yet" if step is None else f"{self.last_path} (step {step})"

    def _diverged(self, why, final=False):
        """A non-finite loss, metric or weight: training stops and nothing of this state is
        saved. Without a best checkpoint the run ends here (SystemExit). With one, training()
        turns False and finish() tests that checkpoint, writes the results record with
        `diverged` (a baseline that diverges has a result: its best model and where it broke)
        and calls this again (final) to exit with the error."""
        if self.diverged is None and not final and not self.interrupted:
            self.diverged = why
            self.elapsed = time.time() - self.t_start
            if self.best is not None and os.path.exists(self.best_path):
                if os.path.exists(self.last_path):  # so that --resume / --eval-only know it
                    self._save(self.last_path, {**self._read(self.last_path), "diverged": why})
                self.bar.write(f"{why}: the run diverged; testing its best validation checkpoint")
                return
        self._fail(f"{why}: the run diverged and stops; nothing of this state is saved. The "
                   f"checkpoint on disk: {self._on_disk()}"
                   + ("; the results file records the test of the best validation checkpoint"
                      if final else ""))

    def _fail(self, message, code=1):
        self.close()  # the progress bar ends before the message
        if code != 1:
            print(message, file=sys.stderr)
            raise SystemExit(code)
        raise SystemExit(f"error: {message}")

    def _check_finite(self):
        """True if every weight is finite; else _diverged (which returns only if there is a
        best checkpoint to test) and False."""
        if all(torch.isfinite(p).all() for p in self.model.state_dict().values()
               if p.is_floating_point()):
            return True
        self._diverged(f"non-finite weights at step {self.step}")
        return False

    def _write_last(self):
        self.elapsed = time.time() - self.t_start
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        self._save(self.last_path, dict(
            model=self.model.state_dict(), rng=rng, step=self.step, best=self.best,
            history=self.history, elapsed=self.elapsed, config=vars(self.args), extra=self.extra,
            **{k: v.state_dict() for k, v in self.state.items()}, **self.meta))
        self.saved_step, self.last_save = self.step, time.time()

    def _save(self, path, state):
        try:
            save_checkpoint(path, state)
        except OSError as e:  # a full disk: keep the previous file, remove the partial one
            if os.path.exists(path + ".tmp"):
                os.remove(path + ".tmp")
            self._fail(f"could not write {path} ({e.strerror}); the checkpoint on disk: "
                       f"{self._on_disk()}")

    def _read(self, path):
        try:
            ck = torch.load(path, map_location=self.device, weights_only=False)
        except FileNotFoundError:
            self._fail(f"checkpoint {path} is missing (--restart starts the run over)")
        except Exception as e:  # truncated, empty or not a torch file
            self._fail(f"cannot read checkpoint {path} ({type(e).__name__}); delete it or use "
                       f"--restart")
        if not isinstance(ck, dict) or "model" not in ck or "step" not in ck:
            self._fail(f"{path} is not a checkpoint of {self.script}; delete it or use --restart")
        return ck

    def _restore(self, ck):
        if "config" not in ck or "history" not in ck:
            self._fail(f"{self.last_path} is not a checkpoint of {self.script}; delete it or use "
                       f"--restart")
        now, then = vars(self.args), {**self.added, **ck["config"]}
        changed = sorted(k for k in set(now) | set(then)
                         if k not in RESUMABLE_FLAGS and now.get(k) != then.get(k))
        if changed:
            self._fail("--resume with flags that differ from the checkpoint's: " + ", ".join(
                f"--{k.replace('_', '-')} {now.get(k)} (checkpoint: {then.get(k)})"
                for k in changed))
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
        self.step, self.best, self.history = ck["step"], ck["best"], ck["history"]
        self.elapsed, self.extra = ck["elapsed"], ck.get("extra", {})
        self.diverged = ck.get("diverged")  # then --resume only tests the best checkpoint
        self.saved_step = self.step

    def _lock(self, folder):
        """Takes ckpt/<name>.lock (the owner's pid); a lock whose process is gone is stale."""
        path = os.path.join(folder, self.name + ".lock")
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    with open(path) as f:
                        pid = int(f.read().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise SystemExit(f"error: run {self.name} is already running (pid {pid}, "
                                     f"lock {path}); wait for it or use another --tag")
                os.remove(path)  # stale: its process is gone
                continue
            except OSError as e:
                raise SystemExit(f"error: --out-dir {self.args.out_dir} is not writable "
                                 f"({e.strerror})")
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.lock_path, Run.active = path, self
            atexit.register(self.close)
            return


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Results tables. Each script defines its paper's table rows once, in its TABLES (label, the run's
# flags, the paper's number); run_all.sh runs them (`python tasks.py runs`) and `python tasks.py
# table results/` fills them. run_all.sh tags every run `<row tag>[-quick|-est|-cpu]-s<seed>`; a
# results record fills the row with the same script, task, model and row tag (transfer rows also
# the ratio test T / training T), seeds are averaged, and each scale gets its own line.

SCRIPTS = ("sab.py", "indrnn.py", "rlstm.py")
_TAG_SUFFIX = re.compile(r"(-quick|-est|-cpu)?(-s\d+)?$")


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
    training time, hardware), then the mean ± std and the range over all runs."""
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


def row(label, task, model, tag, args="", quick="", seeds=1, ckpt=False, paper="UNCONFIRMED",
        metric="test_acc", test_ratio=None, cpu=None):
    """One row of a paper's table. args: the run's flags at the paper's settings (beyond the
    script's defaults); quick: the flags that replace them under --quick; seeds: how many seeds
    run_all.sh runs; ckpt: add --grad-checkpoint on a GPU (full BPTT on long sequences);
    paper: the paper's number; test_ratio: test T / training T of a transfer row; cpu: None if
    the row is not in `run_all.sh --cpu` (paper settings on CPU under a time budget), else the
    flags that tier adds to args (e.g. a stopping rule)."""
    return dict(label=label, task=task, model=model, tag=tag, args=args, quick=quick,
                seeds=seeds, ckpt=ckpt, paper=paper, metric=metric, test_ratio=test_ratio, cpu=cpu)


def paper_table_defs():
    """{table name: (title, rows)} from the three scripts' TABLES, in run_all.sh's order; each
    row also gets its `script`."""
    import importlib  # the scripts import this module: import them only when asked
    return {name: (title, [dict(r, script=script) for r in rows]) for script in SCRIPTS
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
    """The run_all.sh mode in a run's tag: "-quick", "-est", "-cpu" or None."""
    return _TAG_SUFFIX.search(record["config"].get("tag") or "").group(1)


def is_estimate(record):
    """True for a timing run of `run_all.sh --estimate` (tag `<row>-est-s<seed>`): its metrics
    come from minutes of training and never enter the results tables."""
    return _mode(record) == "-est"


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
                 if row_tag(n) == name and _TAG_SUFFIX.search(n).group(1) != "-est"), None)


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
    est = [r for r in records if is_estimate(r)]
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


def _main():
    p = argparse.ArgumentParser(description="Print the results table of finished runs, or with a "
                                "folder write <folder>/TABLES.md, the papers' tables.")
    p.add_argument("what", choices=["table", "seeds", "runs"],
                   help="table: one line per run; seeds: runs of one configuration over seeds "
                        "and thread counts, with mean, std and range; runs: every table row's "
                        "run, for run_all.sh")
    p.add_argument("files", nargs="*", help="results/*.json, or the folder results/")
    args = p.parse_args()
    if args.what == "runs":
        return print_runs()
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
    print(seeds_table(records) if args.what == "seeds" else format_table(records))


if __name__ == "__main__":
    _main()
