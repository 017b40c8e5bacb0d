"""Shared part of the three reproductions: task data, metrics, checkpoints and the results table.

No model code lives here. Every task is defined once, printed in each run's header, and used by
`indrnn.py`, `sab.py` and `rlstm.py` alike:

    task = make_task("copy", seq_len=100, batch_size=64, data_dir="./data", seed=0)
    x, y = task.train_batch(step)   # the batch for a step is a pure function of (seed, step)
    for x, y in task.eval_batches("valid"): ...

Shapes are time-major. `x` is either a LongTensor of tokens (T, B) or a FloatTensor (T, B, C);
`y` is (T, B) tokens for per-step tasks (copy, ptb, text8), (B,) class labels for
classification, (B,) floats for regression (adding).

Run `python tasks.py table results/*.json` to print the results table from finished runs.
"""
import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile

import torch
import torch.nn.functional as F

PMNIST_SEED = 92916     # the one fixed pixel permutation of pMNIST, the same in every script
SPLIT_SEED = 1234       # which 5% of a training set is held out for validation
COPY_EVAL_SEEDS = {"valid": 10_001, "test": 10_002}  # fixed copy / adding evaluation sets


class DataError(RuntimeError):
    """A dataset is missing, cannot be downloaded, or fails its checksum. The message says what to do."""


# ----------------------------------------------------------------------------------------------
# Synthetic tasks: fresh samples every training batch, fixed seeded evaluation sets.

def copy_batch(batch_size, seq_len, generator):
    """Copy memory task in the SAB layout (Ke et al. 2018, section 5.1).

    Input: 10 digits drawn from 1..8, then T-1 blanks (0), a marker 9, then 10 blanks.
    Target: blanks (0) for T+10 steps, then the 10 digits. Total length T+20.

    Returns:
        x: LongTensor (T+20, B) of input tokens in 0..9.
        y: LongTensor (T+20, B) of target tokens in 0..8.
    """
    B, T = batch_size, seq_len
    digits = torch.randint(1, 9, (10, B), generator=generator)
    x = torch.zeros(T + 20, B, dtype=torch.long)
    x[:10] = digits
    x[T + 9] = 9
    y = torch.zeros(T + 20, B, dtype=torch.long)
    y[T + 10:] = digits
    return x, y


def adding_batch(batch_size, seq_len, generator):
    """Adding problem (Hochreiter & Schmidhuber 1997; the IndRNN and SAB variant).

    Channel 0 holds values drawn from U(0, 1); channel 1 is a marker that is 1 at exactly one
    position in each half of the sequence. The target is the sum of the two marked values.

    Returns:
        x: FloatTensor (T, B, 2).
        y: FloatTensor (B,), in [0, 2].
    """
    B, T = batch_size, seq_len
    if T < 2:
        raise ValueError(f"adding needs seq_len >= 2, got {T}")
    values = torch.rand(T, B, generator=generator)
    first = torch.randint(0, T // 2, (B,), generator=generator)
    second = torch.randint(T // 2, T, (B,), generator=generator)
    marker = torch.zeros(T, B)
    marker[first, torch.arange(B)] = 1.0
    marker[second, torch.arange(B)] = 1.0
    y = (values * marker).sum(0)
    return torch.stack([values, marker], dim=2), y


def _step_generator(seed, step):
    """A generator whose state depends on (seed, step) only, so a resumed run sees the same data."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class SyntheticTask:
    """Copy or adding: a fresh batch every step, fixed seeded valid/test sets."""

    def __init__(self, name, seq_len, batch_size, seed, test_seq_len=None, eval_size=1000):
        self.name, self.seq_len, self.batch_size, self.seed = name, seq_len, batch_size, seed
        self.test_seq_len = test_seq_len or seq_len
        self.eval_size = eval_size
        self.make = copy_batch if name == "copy" else adding_batch
        if name == "copy":
            self.kind, self.n_in, self.n_out = "copy", 10, 9
            self.description = (
                f"copy (SAB layout): 10 digits from 1..8, T-1={seq_len - 1} blanks, marker 9, "
                f"10 blanks; length T+20={seq_len + 20}; target: blanks then the digits; metric: "
                f"accuracy and CE on the last 10 steps; test T={self.test_seq_len}")
        else:
            self.kind, self.n_in, self.n_out = "regress", 2, 1
            self.description = (
                f"adding: T={seq_len}, 2 channels (U(0,1) values, marker), one marker in each half, "
                f"target = sum of the marked values, metric MSE (predicting 1 gives about 0.167); "
                f"test T={self.test_seq_len}")

    def train_batch(self, step):
        return self.make(self.batch_size, self.seq_len, _step_generator(self.seed, step))

    def eval_batches(self, split, limit=None):
        """Yields (x, y) batches of a fixed set of `limit` (default eval_size) samples; the test
        split uses `test_seq_len`."""
        T = self.test_seq_len if split == "test" else self.seq_len
        g = torch.Generator().manual_seed(COPY_EVAL_SEEDS[split] + T)
        n = limit or self.eval_size
        for start in range(0, n, self.batch_size):
            yield self.make(min(self.batch_size, n - start), T, g)


# ----------------------------------------------------------------------------------------------
# Image classification as pixel sequences.

def _torchvision_dataset(cls, root, train):
    try:
        return cls(root=root, train=train, download=True)
    except Exception as e:  # network errors, corrupted archives, ...
        files = ", ".join(name for name, _ in getattr(cls, "resources", [])) or cls.filename
        where = os.path.join(root, "MNIST", "raw") if cls.__name__ == "MNIST" else root
        raise DataError(
            f"{cls.__name__} is missing from {os.path.abspath(root)} and could not be downloaded "
            f"({type(e).__name__}: {e}). Put the official files ({files}) into "
            f"{os.path.abspath(where)}, or run once with network access.") from e


class ImageTask:
    """mnist, pmnist (784 steps x 1 channel) and cifar10 (1024 steps x 3 RGB channels).

    Pixels scaled to [0, 1]; `as_tokens=True` yields the raw 0..255 values as tokens instead
    (for models with a pixel embedding). 5% of the training set is held out for validation with
    the fixed seed SPLIT_SEED; the test split is the official test set.
    """

    def __init__(self, name, batch_size, data_dir, seed, as_tokens=False):
        import torchvision  # imported here so that synthetic tasks need no torchvision
        self.name, self.batch_size, self.seed, self.as_tokens = name, batch_size, seed, as_tokens
        self.kind = "classify"
        self._epoch = self._order = None  # the shuffle of the current epoch, made once per epoch
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.MNIST
        train, test = (_torchvision_dataset(cls, data_dir, t) for t in (True, False))
        if name == "cifar10":  # (N, 32, 32, 3) uint8 numpy -> (N, 1024, 3), row-major scan
            to_seq = lambda d: torch.as_tensor(d.data).reshape(len(d.data), 1024, 3)
            self.n_in, self.seq_len = 3, 1024
        else:                  # (N, 28, 28) uint8 -> (N, 784, 1)
            to_seq = lambda d: d.data.reshape(len(d.data), 784, 1)
            self.n_in, self.seq_len = 1, 784
        labels = lambda d: torch.as_tensor(d.targets, dtype=torch.long)
        x_train, y_train, x_test, y_test = to_seq(train), labels(train), to_seq(test), labels(test)
        if name == "pmnist":
            perm = torch.randperm(784, generator=torch.Generator().manual_seed(PMNIST_SEED))
            x_train, x_test = x_train[:, perm], x_test[:, perm]
        split = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_val = len(x_train) // 20
        self.data = {
            "train": (x_train[split[n_val:]], y_train[split[n_val:]]),
            "valid": (x_train[split[:n_val]], y_train[split[:n_val]]),
            "test": (x_test, y_test),
        }
        self.n_out = 10
        self.vocab = 256 if as_tokens else None
        self.description = (
            f"{name}: {self.seq_len} steps x {self.n_in} channel(s), pixels "
            f"{'as tokens 0..255' if as_tokens else 'scaled to [0,1]'}"
            + (f", fixed permutation seed {PMNIST_SEED}" if name == "pmnist" else "")
            + f"; train {len(self.data['train'][0])} / valid {n_val} (5%, seed {SPLIT_SEED}) / "
              f"test {len(x_test)}; metric accuracy")

    def _batch(self, x, y):
        x = x.transpose(0, 1)  # (B, T, C) -> (T, B, C)
        if self.as_tokens:
            return x.squeeze(2).long() if self.n_in == 1 else x.long(), y
        return x.float() / 255.0, y

    def train_batch(self, step):
        """Sampling without replacement; the epoch's order depends on (seed, epoch) only."""
        x, y = self.data["train"]
        per_epoch = len(x) // self.batch_size
        epoch, i = divmod(step, per_epoch)
        if self._epoch != epoch:
            self._epoch = epoch
            self._order = torch.randperm(len(x), generator=_step_generator(self.seed, epoch))
        idx = self._order[i * self.batch_size:(i + 1) * self.batch_size]
        return self._batch(x[idx], y[idx])

    def eval_batches(self, split, limit=None):
        x, y = self.data[split]
        n = len(x) if limit is None else min(limit, len(x))
        for start in range(0, n, self.batch_size):
            yield self._batch(x[start:start + self.batch_size], y[start:start + self.batch_size])


# ----------------------------------------------------------------------------------------------
# Character-level language modelling.

# Each file: (name, md5, URLs tried in order). The first URL is a byte-identical copy of
# Mikolov's simple-examples split at a fixed commit; the tarball is the original distribution.
_PTB_TGZ = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
_PTB_RAW = ("https://raw.githubusercontent.com/arthurdehgan/IFT6135_assignment_2/"
            "191820cabc95c8d8af11d0bf3679207dd3b97e08/data/")
PTB_FILES = {
    "train": ("ptb.char.train.txt", "874909f99060142f6b88cc74c34baaa2"),
    "valid": ("ptb.char.valid.txt", "9e0fe5bec2a8bf43fd686dc23d5ab8bb"),
    "test": ("ptb.char.test.txt", "1f9a2d1afe00f76e8bfbe09a65439681"),
}
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"  # of `text8`


def _checksum(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(url, dest):
    tmp = dest + ".part"
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f)
    os.replace(tmp, dest)


def _verified(path, digest, algo="md5"):
    """True if `path` exists with the right checksum; raises DataError if it exists corrupted."""
    if not os.path.exists(path):
        return False
    if _checksum(path, algo) != digest:
        raise DataError(f"{path} fails its {algo} checksum (expected {digest}): the file is "
                        f"corrupted or truncated. Delete it and run again to download it.")
    return True


def ensure_ptb(data_dir):
    """Returns {split: path} of the char-level PTB files, downloading them if missing.

    Files live in `<data_dir>/ptb/`. Raises DataError if they cannot be had or fail their MD5.
    """
    folder = os.path.join(data_dir, "ptb")
    os.makedirs(folder, exist_ok=True)
    paths = {s: os.path.join(folder, name) for s, (name, _) in PTB_FILES.items()}
    errors = []
    for split, (name, md5) in PTB_FILES.items():
        if _verified(paths[split], md5):
            continue
        try:
            _download(_PTB_RAW + name, paths[split])
        except OSError as e:
            errors.append(f"{_PTB_RAW + name}: {e}")
            try:  # the original tarball, which has moved before
                tgz = os.path.join(folder, "simple-examples.tgz")
                _download(_PTB_TGZ, tgz)
                with tarfile.open(tgz) as tar:
                    member = tar.extractfile(f"./simple-examples/data/{name}")
                    with open(paths[split], "wb") as f:
                        shutil.copyfileobj(member, f)
            except (OSError, KeyError, tarfile.TarError) as e2:
                errors.append(f"{_PTB_TGZ}: {e2}")
        if not os.path.exists(paths[split]):
            raise DataError(
                f"char-level Penn Treebank file {name} is missing from {folder} and could not be "
                f"downloaded ({'; '.join(errors)}). Put ptb.char.train.txt, ptb.char.valid.txt and "
                f"ptb.char.test.txt (Mikolov's simple-examples/data) into {folder}.")
        _verified(paths[split], md5)
    return paths


def ensure_text8(data_dir):
    """Returns the path of `<data_dir>/text8/text8` (100M characters), downloading it if missing."""
    folder = os.path.join(data_dir, "text8")
    path = os.path.join(folder, "text8")
    if _verified(path, TEXT8_SHA256, "sha256"):
        return path
    os.makedirs(folder, exist_ok=True)
    zpath = path + ".zip"
    try:
        if not os.path.exists(zpath):
            _download(TEXT8_URL, zpath)
        with zipfile.ZipFile(zpath) as z:
            z.extract("text8", folder)
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"text8 is missing from {folder} and could not be downloaded from "
                        f"{TEXT8_URL} ({e}). Put the unzipped file `text8` into {folder}.") from e
    _verified(path, TEXT8_SHA256, "sha256")
    return path


class CharLMTask:
    """Character-level language modelling: ptb (Mikolov split) or text8 (90M/5M/5M).

    Each split is cut into B contiguous streams; batch i is the non-overlapping window
    [i*T, (i+1)*T) of every stream, so hidden states may be carried from one batch to the next.
    Metric: bits per character (BPC) = cross-entropy in nats / ln 2.
    """

    def __init__(self, name, seq_len, batch_size, data_dir, eval_batch_size=None):
        self.name, self.seq_len, self.batch_size, self.kind = name, seq_len, batch_size, "lm"
        if name == "ptb":
            paths = ensure_ptb(data_dir)
            # The char files are space-separated characters; '_' marks word boundaries.
            text = {s: open(p).read().split(" ") for s, p in paths.items()}
            text = {s: [c for c in t if c] for s, t in text.items()}
        else:
            raw = open(ensure_text8(data_dir)).read()
            text = {"train": raw[:90_000_000], "valid": raw[90_000_000:95_000_000],
                    "test": raw[95_000_000:]}
        self.vocab_list = sorted(set(text["train"]))
        index = {c: i for i, c in enumerate(self.vocab_list)}
        self.n_in = self.n_out = self.vocab = len(self.vocab_list)
        eval_b = eval_batch_size or batch_size
        self.streams = {s: self._streams(torch.tensor([index[c] for c in t], dtype=torch.long),
                                         batch_size if s == "train" else eval_b)
                        for s, t in text.items()}
        sizes = {s: len(t) for s, t in text.items()}
        self.description = (f"{name} (char level): vocab {self.vocab}, characters train/valid/test "
                            f"{sizes['train']}/{sizes['valid']}/{sizes['test']}, {batch_size} "
                            f"contiguous streams, windows of T={seq_len}; metric BPC")

    @staticmethod
    def _streams(data, b):
        n = len(data) // b
        return data[:n * b].view(b, n)  # (B, N): stream j is data[j*n:(j+1)*n]

    def windows(self, split):
        """Number of windows of T steps in one pass over a split."""
        return (self.streams[split].shape[1] - 1) // self.seq_len

    def _window(self, split, i):
        s, T = self.streams[split], self.seq_len
        chunk = s[:, i * T:i * T + T + 1].t()  # (T+1, B)
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
    """Builds a task by name (one of TASK_NAMES). Raises ValueError / DataError with a clear message."""
    if name in ("copy", "adding"):
        return SyntheticTask(name, seq_len, batch_size, seed, test_seq_len, eval_size)
    if name in ("mnist", "pmnist", "cifar10"):
        return ImageTask(name, batch_size, data_dir, seed, as_tokens)
    if name in ("ptb", "text8"):
        return CharLMTask(name, seq_len, batch_size, data_dir)
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")


# ----------------------------------------------------------------------------------------------
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

def positive_int(s):
    """argparse type: an int > 0, else a one-line usage error."""
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def nonneg_int(s):
    """argparse type: an int >= 0, else a one-line usage error."""
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def positive_float(s):
    """argparse type: a float > 0, else a one-line usage error."""
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def common_parser(description, tasks, models):
    """argparse parser with the shared flags. Defaults of None are filled in per task by the script."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--task", choices=tasks, default=tasks[0])
    a("--model", choices=models, default=models[0])
    a("--seq-len", type=positive_int, help="T (default: the paper's for the task)")
    a("--test-seq-len", type=positive_int, help="evaluate the test set at this T (transfer)")
    a("--batch-size", type=positive_int)
    a("--hidden-size", type=positive_int)
    a("--layers", type=positive_int)
    a("--lr", type=positive_float)
    a("--clip", type=float, help="gradient-norm clip (0: none)")
    a("--steps", type=positive_int, help="training steps (optimizer updates)")
    a("--eval-every", type=positive_int, help="validate and checkpoint every N steps")
    a("--eval-size", type=positive_int,
      help="validation samples (copy, adding, images) or windows (ptb, text8) per evaluation")
    a("--time-budget", type=positive_float, help="stop training after this many minutes")
    a("--seed", type=int, default=0)
    a("--device", choices=["auto", "cpu", "cuda"], default="auto")
    a("--amp", nargs="?", const="auto", default="off", choices=["off", "auto", "bf16", "fp16"],
      help="mixed precision under torch.autocast: bf16 where supported, else fp16 + GradScaler")
    a("--grad-checkpoint", action="store_true",
      help="recompute the forward pass in time segments (torch.utils.checkpoint)")
    a("--data-dir", default="./data")
    a("--out-dir", default="./results")
    a("--tag", help="name suffix of the result and checkpoint files (default: T<seq-len>[-quick])")
    a("--resume", action="store_true", help="continue from the last checkpoint of this run name")
    a("--quick", action="store_true", help="CPU-scale preset that runs in minutes")
    a("--benchmark", action="store_true",
      help="time forward+backward and peak memory against nn.LSTM, then exit")
    a("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    return p


def pick_device(name):
    """torch.device for --device {auto,cpu,cuda}; SystemExit if cuda is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    return torch.device(name)


def amp_settings(amp, device):
    """(autocast dtype or None, use GradScaler). Raises SystemExit for fp16 on CPU."""
    if amp == "off":
        return None, False
    if amp == "fp16" and device.type == "cpu":
        raise SystemExit("error: --amp fp16 needs a CUDA device; on CPU use --amp bf16")
    if amp == "auto":
        amp = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)


# ----------------------------------------------------------------------------------------------
# Checkpoints and results.

def save_checkpoint(path, state):
    """Writes atomically: a killed run leaves either the old or the new file, never half of one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state():
    """The torch (and CUDA) RNG states, for a checkpoint."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    """Restores what rng_state() returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def hardware(device):
    """A short description of the machine: the GPU's name, or the CPU model and thread count."""
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
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_memory_mb(device):
    """Peak CUDA memory allocated on a GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_results(path, record):
    """Writes one run's JSON record atomically and returns the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
    return path


def format_table(records):
    """Markdown table of finished runs: the paper's number next to ours, command, hardware, time."""
    rows = ["| script | task | model | T | test T | metric | paper | ours | command | hardware | "
            "wall time | steps |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def order(r):
        c = r["config"]
        return (r["script"], c["task"], c["model"], c.get("seq_len") or 0,
                c.get("test_seq_len") or c.get("seq_len") or 0)
    for r in sorted(records, key=order):
        c = r["config"]
        metric = r["metric"]
        ours = r["metrics"].get(metric)
        ours = "n/a" if ours is None else f"{ours:.2f}" if metric.endswith("acc") else f"{ours:.4f}"
        rows.append(
            f"| {r['script']} | {c['task']} | {c['model']} | {c.get('seq_len')} | "
            f"{c.get('test_seq_len') or c.get('seq_len')} | {metric} | {r['paper']} | {ours} | "
            f"`{r['command']}` | {r['hardware']} | {r['wall_seconds'] / 60:.1f} min | "
            f"{r.get('steps_done', '')} |")
    return "\n".join(rows)


def benchmark(step_fn, device, repeats=3):
    """Times `step_fn()` (one forward+backward) and measures its memory.

    Returns (seconds per call, memory MiB). On CUDA the memory is the peak allocated during the
    call; on CPU it is the size of the tensors autograd saves for backward (the activation
    memory that grows with T), counted once per storage.
    """
    step_fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    saved = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            saved[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step_fn()
    for _ in range(repeats - 1):
        step_fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        mem = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        mem = sum(saved.values()) / 2**20
    return (time.perf_counter() - start) / repeats, mem


def _main():
    p = argparse.ArgumentParser(description="Print the results table of finished runs.")
    p.add_argument("what", choices=["table"])
    p.add_argument("files", nargs="+", help="results/*.json")
    args = p.parse_args()
    records = [json.load(open(f)) for f in sorted(args.files)]
    print(format_table(records))


if __name__ == "__main__":
    _main()
