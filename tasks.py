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
import re
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


def holdout(n):
    """Splits n training samples: (indices kept for training, the 5% held out for validation),
    the same fixed split (seed SPLIT_SEED) in every script."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = n // 20
    return order[n_val:], order[:n_val]


class EpochShuffle:
    """Training batches sampled without replacement; the order of an epoch depends on
    (seed, epoch) only, so a resumed run sees the same batches. Made once per epoch."""
    _epoch = _order = None

    def _epoch_indices(self, n, step):
        """Positions in 0..n-1 of the batch_size training samples of `step`."""
        epoch, i = divmod(step, max(n // self.batch_size, 1))
        if self._epoch != epoch:
            self._epoch = epoch
            self._order = torch.randperm(n, generator=_step_generator(self.seed, epoch))
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]


def _image_splits(x_train, y_train, test):
    """{"train", "valid", "test"} (x, y) pairs of an image-like task (see `holdout`)."""
    train, valid = holdout(len(x_train))
    return {"train": (x_train[train], y_train[train]), "valid": (x_train[valid], y_train[valid]),
            "test": test}


class ImageTask(EpochShuffle):
    """mnist, pmnist (784 steps x 1 channel) and cifar10 (1024 steps x 3 RGB channels).

    Pixels scaled to [0, 1]; `as_tokens=True` yields the raw 0..255 values as tokens instead
    (for models with a pixel embedding). 5% of the training set is held out for validation with
    the fixed seed SPLIT_SEED; the test split is the official test set.
    """

    def __init__(self, name, batch_size, data_dir, seed, as_tokens=False):
        import torchvision  # imported here so that synthetic tasks need no torchvision
        self.name, self.batch_size, self.seed, self.as_tokens = name, batch_size, seed, as_tokens
        self.kind = "classify"
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
        self.data = _image_splits(x_train, y_train, (x_test, y_test))
        n_val = len(self.data["valid"][0])
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


# ----------------------------------------------------------------------------------------------
# NTU RGB+D skeletons (indrnn.py). The data needs registration with its owners, so nothing here
# downloads it: the loader parses the official `.skeleton` text files once and caches arrays.

NTU_URL = "https://rose1.ntu.edu.sg/dataset/actionRecognition/"
NTU_ZIP = "nturgbd_skeletons_s001_to_s017.zip"
# Shahroudy et al. 2016, section 4: the 20 training subjects of the cross-subject protocol; the
# cross-view protocol trains on cameras 2 and 3 and tests on camera 1.
NTU_CS_TRAIN_SUBJECTS = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
NTU_CV_TRAIN_CAMERAS = {2, 3}


def parse_skeleton(path, bodies=2, joints=25):
    """Parses one official NTU RGB+D `.skeleton` file.

    The format (one number group per line): frame count; then per frame a body count and per
    body a line of 10 body fields (bodyID first), a joint count and one line of 12 fields per
    joint (x y z in metres first). Keeps the `bodies` bodyIDs tracked in the most frames, in order
    of first appearance; an absent body is zeros.

    Returns:
        FloatTensor (n_frames, bodies * joints * 3): x, y, z of every joint of every body.
    Raises:
        DataError: if the file does not follow the format (the message names the file and line).
    """
    with open(path) as f:
        lines = f.read().split("\n")
    pos = 0

    def take():
        nonlocal pos
        pos += 1
        return lines[pos - 1].split()
    frames = []  # per frame: {bodyID: (joints, 3) list}
    try:
        for _ in range(int(take()[0])):
            frame = {}
            for _ in range(int(take()[0])):
                body_id = take()[0]
                coords = [[float(v) for v in take()[:3]] for _ in range(int(take()[0]))]
                if len(coords) != joints:
                    raise ValueError(f"{len(coords)} joints, expected {joints}")
                frame[body_id] = coords
            frames.append(frame)
    except (ValueError, IndexError) as e:
        raise DataError(f"{path}: not an NTU RGB+D .skeleton file near line {pos} ({e})") from e
    counts = {}
    for frame in frames:
        for body_id in frame:
            counts[body_id] = counts.get(body_id, 0) + 1
    keep = sorted(counts, key=lambda b: -counts[b])[:bodies]    # the most tracked bodies ...
    keep = [b for b in counts if b in keep]                     # ... in order of appearance
    out = torch.zeros(len(frames), bodies, joints, 3)
    for t, frame in enumerate(frames):
        for slot, body_id in enumerate(keep):
            if body_id in frame:
                out[t, slot] = torch.tensor(frame[body_id])
    return out.reshape(len(frames), bodies * joints * 3)


def load_ntu(data_dir):
    """All NTU RGB+D 60 skeleton sequences as one cached dict, parsed on first use.

    Reads `<data_dir>/ntu/nturgb+d_skeletons/S###C###P###R###A###.skeleton` and caches
    `<data_dir>/ntu/skeletons.pt`: frames (F, 150) float16, centred on the mean base-of-spine
    joint of the first body; offsets (N+1,) into frames; label (N,) 0..59; subject, camera (N,).
    Raises DataError saying what to obtain and where to put it when the files are missing.
    """
    folder = os.path.join(data_dir, "ntu")
    cache = os.path.join(folder, "skeletons.pt")
    if os.path.exists(cache):
        return torch.load(cache)
    src = os.path.join(folder, "nturgb+d_skeletons")
    names = sorted(n for n in os.listdir(src) if n.endswith(".skeleton")) \
        if os.path.isdir(src) else []
    if not names:
        raise DataError(
            f"NTU RGB+D skeletons are missing: no .skeleton files in {os.path.abspath(src)}. The "
            f"data needs registration: request it at {NTU_URL}, download {NTU_ZIP} (NTU RGB+D 60, "
            f"3D skeletons) and unzip it into {os.path.abspath(folder)} so that files such as "
            f"{os.path.join(src, 'S001C001P001R001A001.skeleton')} exist. The first run parses "
            f"them once into {cache}.")
    seqs, meta = [], []
    for name in names:
        x = parse_skeleton(os.path.join(src, name))             # (n, 150)
        first = x[:, :3]                                        # base of spine, first body
        present = first.abs().sum(1) > 0
        if present.any():
            centre = first[present].mean(0).repeat(50)          # (150,)
            x = torch.where(x != 0, x - centre, x)              # absent joints stay zero
        seqs.append(x.half())
        meta.append([int(name[i + 1:i + 4]) for i in (0, 4, 8, 12, 16)])  # S C P R A
    meta = torch.tensor(meta)
    lengths = torch.tensor([0] + [len(s) for s in seqs])
    data = dict(frames=torch.cat(seqs), offsets=lengths.cumsum(0), label=meta[:, 4] - 1,
                subject=meta[:, 2], camera=meta[:, 1], names=names)
    save_checkpoint(cache, data)
    return data


class NTUTask(EpochShuffle):
    """NTU RGB+D 60 action recognition from 3D skeletons, `frames` frames per sequence.

    Each sequence is cut into `frames` equal segments; training takes a random frame from each
    (fresh every epoch), evaluation the middle frame. Input (frames, B, 150): x, y, z of 25 joints
    of two bodies (the second zero if absent). Protocol "cs" (cross-subject) or "cv" (cross-view);
    5% of the training set (seed SPLIT_SEED) is held out for validation.
    """

    def __init__(self, protocol, batch_size, data_dir, seed, frames=20):
        if protocol not in ("cs", "cv"):
            raise ValueError(f"NTU protocol must be 'cs' or 'cv', got {protocol!r}")
        d = load_ntu(data_dir)
        self.frames_all, self.offsets = d["frames"], d["offsets"]
        self.batch_size, self.seed, self.seq_len = batch_size, seed, frames
        self.kind, self.n_in, self.n_out = "classify", 150, 60
        if protocol == "cs":
            train = torch.tensor([int(s) in NTU_CS_TRAIN_SUBJECTS for s in d["subject"]])
        else:
            train = torch.tensor([int(c) in NTU_CV_TRAIN_CAMERAS for c in d["camera"]])
        train_idx, test_idx = train.nonzero().squeeze(1), (~train).nonzero().squeeze(1)
        train, valid = holdout(len(train_idx))
        n_val = len(valid)
        self.index = {"train": train_idx[train], "valid": train_idx[valid], "test": test_idx}
        self.label = d["label"]
        self.description = (
            f"ntu ({'cross-subject' if protocol == 'cs' else 'cross-view'}): {frames} frames per "
            f"sequence (random frame per segment in training, middle frame in evaluation), 150 "
            f"features (2 bodies x 25 joints x xyz); train {len(self.index['train'])} / valid "
            f"{n_val} (5%, seed {SPLIT_SEED}) / test {len(test_idx)}; metric accuracy")

    def _batch(self, idx, generator=None):
        start, n = self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]  # (B,), (B,)
        seg = torch.arange(self.seq_len + 1)[:, None] * n[None] / self.seq_len   # (S+1, B)
        pos = torch.rand(self.seq_len, len(idx), generator=generator) if generator else 0.5
        t = (seg[:-1] + pos * (seg[1:] - seg[:-1])).long().clamp(max=(n - 1).clamp(min=0))
        x = self.frames_all[(start + t).clamp(max=len(self.frames_all) - 1)].float()  # (S, B, 150)
        x[:, n == 0] = 0.0                                                        # empty files
        return x, self.label[idx]

    def train_batch(self, step):
        idx = self.index["train"]
        batch = idx[self._epoch_indices(len(idx), step)]
        return self._batch(batch, _step_generator(self.seed + 1, step))

    def eval_batches(self, split, limit=None):
        idx = self.index[split]
        idx = idx if limit is None else idx[:limit]
        for start in range(0, len(idx), self.batch_size):
            yield self._batch(idx[start:start + self.batch_size])


# --- StanfordDogs and DBpedia (rlstm.py) ---
# Trinh et al. 2018, section 4.3-4.4: StanfordDogs images as pixel sequences (up to 16384 steps)
# and DBpedia character-level classification. Both are downloaded into --data-dir when missing.

DOGS_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
# The official layout (the dataset's README.txt): images.tar holds Images/<wnid>-<breed>/*.jpg;
# lists.tar holds file_list.mat, train_list.mat and test_list.mat, MATLAB files whose `file_list`
# is a cell array of '<wnid>-<breed>/<name>.jpg' paths and `labels` the classes 1..120.
# Official split: 12,000 training images (100 per class) and 8,580 test images. The site
# publishes no checksums, so the files are checked by these counts instead.
DOGS_SPLIT_SIZES = {"train": 12_000, "test": 8_580}


def read_mat5(path):
    """Reads the numeric and char arrays and the cell arrays of them from a MATLAB v5 (-v6/-v7)
    .mat file, with torch and the standard library only (scipy is not a dependency).

    Returns {name: value}: a char array gives a str, a numeric array a list of floats (column-
    major), a cell array a list of such values. Raises DataError for other files (e.g. -v7.3).
    """
    import struct
    import zlib
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 128 or raw[126:128] != b"IM" or raw[124:126] != b"\x00\x01":
        raise DataError(f"{path} is not a little-endian MATLAB v5 .mat file (MATLAB -v7.3 / HDF5 "
                        f"files are not supported)")
    numeric = {1: "b", 2: "B", 3: "h", 4: "H", 5: "i", 6: "I", 7: "f", 9: "d", 12: "q", 13: "Q"}

    def elements(buf):
        pos = 0
        while pos + 8 <= len(buf):
            kind, size = struct.unpack_from("<II", buf, pos)
            if kind >> 16:  # small data element: size and type packed in 4 bytes
                kind, size, start, pos = kind & 0xFFFF, kind >> 16, pos + 4, pos + 8
            else:
                start = pos + 8
                pos = start + (size if kind == 15 else (size + 7) // 8 * 8)
            yield kind, buf[start:start + size]

    def value(kind, data):
        if kind == 15:
            return [value(*e) for e in elements(zlib.decompress(data))][0]
        if kind == 16:
            return data.decode("utf-8")
        if kind in numeric:
            return list(struct.unpack(f"<{len(data) // struct.calcsize(numeric[kind])}"
                                      f"{numeric[kind]}", data))
        if kind != 14:
            raise DataError(f"{path}: unsupported MATLAB data type {kind}")
        parts = list(elements(data))
        cls = struct.unpack_from("<I", parts[0][1])[0] & 0xFF
        name = parts[2][1].decode("latin-1")
        if cls == 1:    # cell array: one matrix element per cell
            return name, [value(*p)[1] for p in parts[3:]]
        if cls == 4:    # char array
            chars = value(*parts[3]) if parts[3][0] != 16 else parts[3][1].decode("utf-8")
            return name, chars if isinstance(chars, str) else "".join(map(chr, chars))
        if 6 <= cls <= 15:
            return name, [float(v) for v in value(*parts[3])]
        raise DataError(f"{path}: unsupported MATLAB array class {cls} in {name!r}")

    out = {}
    for kind, data in elements(raw[128:]):
        item = value(kind, data)
        if isinstance(item, tuple):
            out[item[0]] = item[1]
    return out


def _fetch_and_extract(url, folder, archive, errors):
    """Downloads url into folder/archive if missing and extracts it there; appends errors."""
    path = os.path.join(folder, archive)
    try:
        if not os.path.exists(path):
            _download(url, path)
        with tarfile.open(path) as tar:
            tar.extractall(folder, filter="data")
    except (OSError, tarfile.TarError) as e:
        errors.append(f"{url}: {e}")


def load_stanford_dogs(data_dir, side):
    """StanfordDogs images as uint8 pixel sequences (N, side*side, 3), row-major RGB scan.

    Reads the official layout under `<data_dir>/stanford_dogs/` (Images/ and the three lists),
    downloading and extracting images.tar and lists.tar when missing. Every image is centre-
    cropped to a square and resized to side x side (antialiased bilinear; the paper's
    preprocessing is UNCONFIRMED); the result is cached as `cache_<side>.pt`.
    Returns {"train": (x, y), "test": (x, y)}, y LongTensor of classes 0..119.
    """
    import warnings
    import torchvision
    folder = os.path.join(data_dir, "stanford_dogs")
    cache = os.path.join(folder, f"cache_{side}.pt")
    if os.path.exists(cache):
        return torch.load(cache)
    os.makedirs(folder, exist_ok=True)
    errors = []
    for archive, marker in (("lists.tar", "train_list.mat"), ("images.tar", "Images")):
        if not os.path.exists(os.path.join(folder, marker)):
            _fetch_and_extract(DOGS_URL + archive, folder, archive, errors)
    missing = [m for m in ("train_list.mat", "test_list.mat", "Images")
               if not os.path.exists(os.path.join(folder, m))]
    if missing:
        raise DataError(f"StanfordDogs is missing {', '.join(missing)} in {folder} and could not "
                        f"be downloaded ({'; '.join(errors) or 'no error'}). Put the official "
                        f"images.tar and lists.tar from {DOGS_URL} into {folder}.")
    out = {}
    for split in ("train", "test"):
        mat = read_mat5(os.path.join(folder, f"{split}_list.mat"))
        files, labels = mat.get("file_list"), mat.get("labels")
        if files is None or labels is None or len(files) != len(labels):
            raise DataError(f"{split}_list.mat in {folder} lacks matching file_list and labels")
        if len(files) != DOGS_SPLIT_SIZES[split]:
            raise DataError(f"{split}_list.mat lists {len(files)} images, the official split has "
                            f"{DOGS_SPLIT_SIZES[split]}: replace it with the file from lists.tar")
        images = []
        for name in files:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders
                warnings.simplefilter("ignore", DeprecationWarning)
                img = torchvision.io.decode_image(os.path.join(folder, "Images", name),
                                                  mode=torchvision.io.ImageReadMode.RGB)
            s = min(img.shape[1:])
            top, left = (img.shape[1] - s) // 2, (img.shape[2] - s) // 2
            img = img[:, top:top + s, left:left + s][None].float()
            img = F.interpolate(img, size=(side, side), mode="bilinear", antialias=True,
                                align_corners=False)[0]
            images.append(img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
                          .reshape(side * side, 3))
        y = torch.tensor(labels, dtype=torch.long) - 1
        if y.min() < 0 or y.max() > 119:
            raise DataError(f"{split}_list.mat has labels outside 1..120")
        out[split] = (torch.stack(images), y)
    torch.save(out, cache)
    return out


class StanfordDogsTask(ImageTask):
    """StanfordDogs (120 breeds) as RGB pixel sequences of T = side^2 steps x 3 channels.

    T must be a square (the paper's longest sequences are 16384 = 128 x 128). 5% of the official
    training list is held out for validation (seed SPLIT_SEED); the test split is the official one.
    """

    def __init__(self, seq_len, batch_size, data_dir, seed, as_tokens=False):
        side = math.isqrt(seq_len)
        if side * side != seq_len:
            raise ValueError(f"stanford_dogs needs a square seq_len (side^2, e.g. 1024, 4096, "
                             f"16384), got {seq_len}")
        self.name, self.batch_size, self.seed, self.as_tokens = "stanford_dogs", batch_size, seed, \
            as_tokens
        self.kind = "classify"
        data = load_stanford_dogs(data_dir, side)
        self.data = _image_splits(*data["train"], data["test"])
        n_val, test = len(self.data["valid"][0]), data["test"]
        self.n_in, self.seq_len, self.n_out = 3, seq_len, 120
        self.vocab = 256 if as_tokens else None
        self.description = (
            f"stanford_dogs: {side}x{side} RGB (centre crop, resize), {seq_len} steps x 3 "
            f"channels, pixels {'as tokens 0..255' if as_tokens else 'scaled to [0,1]'}; train "
            f"{len(self.data['train'][0])} / valid {n_val} / test {len(test[0])} (official lists); "
            f"metric accuracy")


# DBpedia ontology classification (Zhang, Zhao & LeCun 2015): dbpedia_csv.tar.gz holds
# dbpedia_csv/{train,test}.csv (rows `class,"title","content"`, classes 1..14, 560,000 / 70,000
# rows) and classes.txt. URL and MD5 as in torchtext's DBpedia dataset; the second URL is a
# mirror tried when Google Drive refuses, accepted only if it passes the same MD5.
DBPEDIA_URLS = ("https://drive.google.com/uc?export=download&id=0Bz8a_Dbh9QhbQ2Vic1kxMmZZQ1k",
                "https://s3.amazonaws.com/fast-ai-nlp/dbpedia_csv.tgz")
DBPEDIA_MD5 = "dca7b1ae12b1091090db52aa7ec5ca64"
# Zhang et al.'s 69-character alphabet plus space; 0 is padding, 1 any other character.
DBPEDIA_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+=<>()[]{} "


def load_dbpedia(data_dir):
    """Returns {"train": (texts, labels), "test": (...)}: texts a list of str (title, a space,
    content), labels LongTensor of classes 0..13. Downloads and extracts the CSV release into
    `<data_dir>/dbpedia/` when missing; raises DataError if that fails or the files look wrong."""
    import csv
    folder = os.path.join(data_dir, "dbpedia")
    csv_dir = os.path.join(folder, "dbpedia_csv")
    errors = []
    if not os.path.exists(os.path.join(csv_dir, "test.csv")):
        os.makedirs(folder, exist_ok=True)
        tgz = os.path.join(folder, "dbpedia_csv.tar.gz")
        for url in DBPEDIA_URLS:
            if os.path.exists(tgz):
                break
            try:
                _download(url, tgz)
                if _checksum(tgz, "md5") != DBPEDIA_MD5:
                    os.remove(tgz)
                    errors.append(f"{url}: not the standard release (MD5 differs)")
            except OSError as e:
                errors.append(f"{url}: {e}")
        if os.path.exists(tgz):
            _verified(tgz, DBPEDIA_MD5)
            with tarfile.open(tgz) as tar:
                tar.extractall(folder, filter="data")
    paths = {s: os.path.join(csv_dir, f"{s}.csv") for s in ("train", "test")}
    if not all(os.path.exists(p) for p in paths.values()):
        raise DataError(f"DBpedia is missing from {csv_dir} and could not be downloaded "
                        f"({'; '.join(errors)}). Put dbpedia_csv.tar.gz (MD5 {DBPEDIA_MD5}) into "
                        f"{folder}, or its extracted dbpedia_csv/ folder with train.csv and test.csv.")
    out = {}
    for split, path in paths.items():
        texts, labels = [], []
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if len(row) != 3 or not row[0].isdigit() or not 1 <= int(row[0]) <= 14:
                    raise DataError(f"{path}, row {i + 1}: expected `class,\"title\",\"content\"` "
                                    f"with class 1..14, got {row[:3]!r}")
                labels.append(int(row[0]) - 1)
                texts.append(row[1] + " " + row[2])
        out[split] = (texts, torch.tensor(labels, dtype=torch.long))
    return out


def encode_chars(texts, seq_len):
    """Lower-cased characters as tokens (DBPEDIA_ALPHABET: 2.., 1 other, 0 padding), the first
    seq_len characters of each text, right-aligned (padding first). Returns uint8 (N, T, 1)."""
    table = bytes(DBPEDIA_ALPHABET.index(chr(c)) + 2 if chr(c) in DBPEDIA_ALPHABET else 1
                  for c in range(256))
    out = torch.zeros(len(texts), seq_len, 1, dtype=torch.uint8)
    for i, t in enumerate(texts):
        b = t.lower().encode("latin-1", errors="replace")[:seq_len].translate(table)
        if b:
            out[i, seq_len - len(b):, 0] = torch.frombuffer(bytearray(b), dtype=torch.uint8)
    return out


class DBpediaTask(ImageTask):
    """DBpedia (14 classes) as character sequences of T steps: tokens (T, B) in 0..vocab-1.

    5% of the training CSV is held out for validation (seed SPLIT_SEED); the test split is the
    official test.csv. Always tokens (characters have no scale), whatever `as_tokens` says.
    """

    def __init__(self, seq_len, batch_size, data_dir, seed, as_tokens=True):
        self.name, self.batch_size, self.seed, self.as_tokens = "dbpedia", batch_size, seed, True
        self.kind = "classify"
        raw = load_dbpedia(data_dir)
        (texts, y_train), (test_texts, y_test) = raw["train"], raw["test"]
        x_train, x_test = encode_chars(texts, seq_len), encode_chars(test_texts, seq_len)
        self.data = _image_splits(x_train, y_train, (x_test, y_test))
        n_val = len(self.data["valid"][0])
        self.n_in, self.seq_len, self.n_out = 1, seq_len, 14
        self.vocab = len(DBPEDIA_ALPHABET) + 2
        self.description = (
            f"dbpedia (char level): title + content, lower-cased, first {seq_len} characters "
            f"right-aligned, vocab {self.vocab} (0 pad, 1 other); train "
            f"{len(self.data['train'][0])} / valid {n_val} / test {len(x_test)}; metric accuracy")


TASK_NAMES = ["copy", "adding", "mnist", "pmnist", "cifar10", "ptb", "text8", "ntu",
              "stanford_dogs", "dbpedia"]


def make_task(name, seq_len=None, batch_size=64, data_dir="./data", seed=0, test_seq_len=None,
              as_tokens=False, eval_size=1000, ntu_protocol="cs"):
    """Builds a task by name (one of TASK_NAMES). Raises ValueError / DataError with a clear message.

    `seq_len` is T of copy / adding / ptb / text8 and the frames per sequence of ntu (default 20);
    images have fixed lengths. `ntu_protocol` is "cs" (cross-subject) or "cv" (cross-view)."""
    if name in ("copy", "adding"):
        return SyntheticTask(name, seq_len, batch_size, seed, test_seq_len, eval_size)
    if name in ("mnist", "pmnist", "cifar10"):
        return ImageTask(name, batch_size, data_dir, seed, as_tokens)
    if name in ("ptb", "text8"):
        return CharLMTask(name, seq_len, batch_size, data_dir)
    if name == "ntu":
        return NTUTask(ntu_protocol, batch_size, data_dir, seed, frames=seq_len or 20)
    if name == "stanford_dogs":  # seq_len: side^2 pixels (default 4096 = 64 x 64)
        return StanfordDogsTask(seq_len or 4096, batch_size, data_dir, seed, as_tokens)
    if name == "dbpedia":        # seq_len: characters per document (default 1024)
        return DBpediaTask(seq_len or 1024, batch_size, data_dir, seed)
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
    a("--test-size", type=positive_int,
      help="test on the first N samples (windows for ptb, text8) only (default: the whole test "
           "set; the --quick presets of slow tasks set it, and the results record it)")
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


def mean_std_range(values):
    """(mean, sample std (0 for one value), min, max) of a list of numbers."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 \
        else 0.0
    return mean, std, min(values), max(values)


def seeds_table(records):
    """Markdown: one line per run of the same configuration (seed, threads, the test metric, steps,
    training time, hardware), then the mean ± std and the range over all runs."""
    rows = ["| seed | threads | test metric | value | best step | steps | training time | "
            "hardware |", "|---|---|---|---|---|---|---|---|"]
    order = sorted(records, key=lambda r: (r["config"].get("threads") or 0, r["config"]["seed"]))
    for r in order:
        rows.append(f"| {r['config']['seed']} | {r['config'].get('threads') or 'default'} | "
                    f"{r['metric']} | {r['metrics'][r['metric']]:.2f} | {r.get('best_step', '')} | "
                    f"{r['steps_done']} | {r['wall_seconds'] / 60:.1f} min | {r['hardware']} |")
    mean, std, lo, hi = mean_std_range([r["metrics"][r["metric"]] for r in records])
    rows.append(f"\n{len(records)} runs: **{mean:.2f} ± {std:.2f}** (mean ± std), range "
                f"{lo:.2f} – {hi:.2f}.")
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


# ----------------------------------------------------------------------------------------------
# The papers' headline tables. run_all.sh gives every run the tag `<row tag>[-quick]-s<seed>`;
# a results record fills the row with the same script, task, model and row tag, seeds are
# averaged, and CPU-scale (--quick) runs get their own line. Transfer rows also match the ratio
# test T / training T (run_all.sh --quick trains the copy task at T/10 and tests at T'/10).

def _row(label, script, task, model, tag, metric, paper="UNCONFIRMED", test_ratio=None):
    return dict(label=label, script=script, task=task, model=model, tag=tag, metric=metric,
                paper=paper, test_ratio=test_ratio)


def _sab_tables():
    names = {"lstm": "LSTM (full BPTT)", "tbptt": "TBPTT (k_trunc 5)", "attn": "LSTM + self-attention",
             "sab": "SAB (k_trunc 5, k_top 5)"}
    paper = {("sab", 100): "100", ("tbptt", 100): "31 (second-hand)"}
    copy = [_row(f"{names[m]}, T={T}", "sab.py", "copy", m, f"T{T}", "test_acc",
                 paper.get((m, T), "UNCONFIRMED")) for m in names for T in (100, 200, 300)]
    transfer = [_row(f"{names[m]}, trained T=100, tested T={T}", "sab.py", "copy", m, "T100",
                     "test_acc", test_ratio=T // 100) for m in ("sab", "lstm", "attn")
                for T in (200, 300, 400, 2000, 5000)]
    other = [_row(f"{names[m]}, {t}", "sab.py", t, m, tag, metric) for t, tag, metric in
             [("adding", "T200", "test_mse"), ("pmnist", "T784", "test_acc"),
              ("cifar10", "T1024", "test_acc"), ("ptb", "T100", "test_bpc"),
              ("text8", "T180", "test_bpc")] for m in ("tbptt", "lstm", "sab")]
    return {"sab-copy": ("SAB Table 1: copy memory, test accuracy (%) on the 10 recalled digits",
                         copy),
            "sab-transfer": ("SAB Table 5: copy, trained at T=100, tested on longer sequences "
                             "(accuracy %)", transfer),
            "sab-other": ("SAB: adding (MSE), pMNIST and CIFAR-10 (accuracy %), PTB and text8 "
                          "(BPC)", other)}


def _indrnn_tables():
    adding = [_row(f"{m}, T={T}", "indrnn.py", "adding", m, f"T{T}", "test_mse",
                   "converges" if m == "indrnn" else "fails" if T >= 1000 else "converges")
              for m in ("indrnn", "lstm", "irnn") for T in (100, 500, 1000, 5000)]
    paper = {("mnist", "indrnn"): "99.0", ("pmnist", "indrnn"): "96.0",
             ("mnist", "res-indrnn"): "99.39 (12 layers)", ("pmnist", "res-indrnn"): "97.02 (12 layers)"}
    mnist = [_row(f"{m}, {t}", "indrnn.py", t, m, "T784", "test_acc", paper[(t, m)])
             for t in ("mnist", "pmnist") for m in ("indrnn", "res-indrnn")]
    ptb = [_row("IndRNN 6 layers, T=50", "indrnn.py", "ptb", "indrnn", "T50", "test_bpc", "1.26"),
           _row("res-IndRNN 11 layers, T=150", "indrnn.py", "ptb", "res-indrnn", "T150",
                "test_bpc", "1.19")]
    ntu = [_row(f"IndRNN 6 layers, {p}", "indrnn.py", "ntu", "indrnn", f"T20-{p}", "test_acc",
                v) for p, v in (("cs", "81.80"), ("cv", "87.97"))]
    return {"indrnn-adding": ("IndRNN Fig. 2: adding problem, test MSE (0.167 = predicting 1)",
                              adding),
            "indrnn-mnist": ("IndRNN Table 2: sequential / permuted MNIST, test accuracy (%)", mnist),
            "indrnn-ptb": ("IndRNN Table 4: char-level PTB, test BPC", ptb),
            "indrnn-ntu": ("IndRNN Table 5: NTU RGB+D, test accuracy (%)", ntu)}


# Trinh et al. 2018, Table 2, test accuracy %: its rows (label, model, full BP?) and the values
# per dataset in that order. rlstm.py reads its paper numbers from here too.
RLSTM_TABLE2_ROWS = [("LSTM Full BP", "lstm", True), ("LSTM Truncate300", "lstm", False),
                     ("r-LSTM Truncate300", "rlstm", False), ("p-LSTM Truncate300", "plstm", False),
                     ("r-LSTM Full BP", "rlstm", True), ("p-LSTM Full BP", "plstm", True)]
RLSTM_TABLE2 = {"mnist": (98.3, 11.3, 96.4, 95.4, 98.4, 98.0),
                "pmnist": (89.4, 88.8, 92.8, 92.5, 95.2, 92.8),
                "cifar10": (58.8, 49.0, 65.9, 64.7, 72.2, 67.6)}


def _rlstm_tables():
    rows = [(label, m, "full" if full else "trunc300") for label, m, full in RLSTM_TABLE2_ROWS]
    table2 = [_row(f"{label}, {t}", "rlstm.py", t, m, f"T{1024 if t == 'cifar10' else 784}-{kind}",
                   "test_acc", str(value))
              for t, values in RLSTM_TABLE2.items()
              for (label, m, kind), value in zip(rows, values)]
    dogs = [_row(f"{label}, T={T}", "rlstm.py", "stanford_dogs", m, f"T{T}-{kind}", "test_acc")
            for T in (1024, 4096, 16384) for label, m, kind in rows[:3]]
    dbpedia = [_row(label, "rlstm.py", "dbpedia", m, f"T1024-{kind}", "test_acc")
               for label, m, kind in rows[:3]]
    return {"rlstm-table2": ("r-LSTM Table 2: test accuracy (%)", table2),
            "rlstm-dogs": ("r-LSTM: StanfordDogs by sequence length, test accuracy (%)", dogs),
            "rlstm-dbpedia": ("r-LSTM: DBpedia, test accuracy (%)", dbpedia)}


PAPER_TABLES = {**_sab_tables(), **_indrnn_tables(), **_rlstm_tables()}


_TAG_SUFFIX = re.compile(r"(-quick|-est|-cpu)?(-s\d+)?$")  # run_all.sh: <row>[-quick|-est|-cpu]-s<seed>


def row_tag(tag):
    """The row part of a run tag: `T100-quick-s2` -> `T100`, `T100-est-s0` -> `T100`."""
    return _TAG_SUFFIX.sub("", tag or "")


def _tag_mode(record):
    """The run_all.sh mode in a run's tag: "-quick", "-est", "-cpu" or None."""
    return _TAG_SUFFIX.search(record["config"].get("tag") or "").group(1)


def _scale(record):
    """How a run was made: "quick" (--quick), "cpu" (run_all.sh --cpu: paper settings on CPU
    under a time budget) or "paper"."""
    if record["config"].get("quick"):
        return "quick"
    return "cpu" if _tag_mode(record) == "-cpu" else "paper"


def is_estimate(record):
    """True for a timing run of `run_all.sh --estimate` (tag `<row>-est-s<seed>`): its metrics
    come from a few minutes of training and never enter the results tables."""
    return _tag_mode(record) == "-est"


def _matches(record, row):
    c = record["config"]
    ratio = c["test_seq_len"] / c["seq_len"] if c.get("test_seq_len") else None
    return (record.get("script") == row["script"] and c.get("task") == row["task"]
            and c.get("model") == row["model"] and row_tag(c.get("tag")) == row["tag"]
            and ratio == row["test_ratio"])


def failed_runs(folder):
    """{run name: its error} for every log in `<folder>/logs` without a results file beside it:
    the last `error: ...` line of the log, up to its first " (" (the details stay in the log)."""
    logs = os.path.join(folder, "logs")
    failures = {}
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
    pattern = (rf"{re.escape(row['script'][:-3])}-{re.escape(row['task'])}-"
               rf"{re.escape(row['model'])}-{re.escape(row['tag'])}(-quick|-cpu)?-s\d+")
    return next((m for n, m in failures.items() if re.fullmatch(pattern, n)), None)


def paper_tables(records, failures=None):
    """Markdown: one table per entry of PAPER_TABLES, one line per row and scale (paper settings
    or CPU-scale --quick), the paper's number beside ours (mean ± std over seeds), the number of
    seeds, device and mean wall time; rows without a result say so, with the error of their
    failed run if `failures` ({run name: error}, see failed_runs) has one."""
    records = [r for r in records if not is_estimate(r)]
    out = []
    for name, (title, rows) in PAPER_TABLES.items():
        out += [f"## {title}", "", f"`bash run_all.sh --only {name}`", "",
                "| row | paper | ours | seeds | scale | device | wall time / run |",
                "|---|---|---|---|---|---|---|"]
        for row in rows:
            runs = [r for r in records if _matches(r, row)]
            if not runs:
                error = _failure(row, failures or {})
                status = f"no result yet: the run failed ({error})" if error else "no result yet"
                out.append(f"| {row['label']} | {row['paper']} | {status} | 0 | | | |")
                continue
            for kind in sorted({_scale(r) for r in runs}):
                group = [r for r in runs if _scale(r) == kind]
                values = [r["metrics"][row["metric"]] for r in group]
                digits = 2 if row["metric"].endswith("acc") else 4
                mean, std, lo, hi = mean_std_range(values)
                ours = f"{mean:.{digits}f}"
                if len(values) > 1:
                    ours += f" ± {std:.{digits}f} (range {lo:.{digits}f} – {hi:.{digits}f})"
                wall = sum(r["wall_seconds"] for r in group) / len(group) / 60
                lengths = sorted({str(r["config"].get("seq_len")) for r in group})
                budgets = "/".join(sorted({f"{r['config']['time_budget']:g}" for r in group
                                           if r["config"].get("time_budget")}))
                scale = {"quick": f"CPU-scale (--quick, T={'/'.join(lengths)})",
                         "cpu": "paper settings on CPU" + (f", {budgets} min of 1 thread"
                                                           if budgets else ""),
                         "paper": "paper settings"}[kind]
                test_sizes = sorted({r["config"].get("test_size") or 0 for r in group})
                if test_sizes != [0]:  # --test-size: not the whole test set
                    scale += f", test on first {'/'.join(str(n or 'all') for n in test_sizes)}"
                out.append(f"| {row['label']} | {row['paper']} | {ours} | {len(group)} | {scale} | "
                           f"{', '.join(sorted({r['hardware'] for r in group}))} | "
                           f"{wall:.1f} min |")
        out.append("")
    return "\n".join(out)


def time_estimates(records):
    """Markdown: the hours each paper table takes at the papers' settings (one seed) on the device
    of the `run_all.sh --estimate` runs among `records`, or "" if there are none.

    Each timing run trains for a short time budget; its hours = wall_seconds / steps_done x the
    configured number of steps, summed over the table's rows. Evaluation time is not counted."""
    est = [r for r in records if is_estimate(r)]
    if not est:
        return ""
    out = ["", "## Estimated hours per table at the papers' settings", "",
           "`bash run_all.sh --estimate`: every run trains for a short time budget with the "
           "papers' settings; its hours = (wall seconds / steps done) x the paper's number of "
           "steps, summed over the table's rows (one seed; evaluation not counted).", "",
           "| table | rows timed | estimated hours | longest row | device |",
           "|---|---|---|---|---|"]
    for name, (title, rows) in PAPER_TABLES.items():
        hours = {}
        for row in rows:
            for r in (r for r in est if _matches(r, row)):
                hours[row["label"]] = (r["wall_seconds"] / max(r["steps_done"], 1)
                                       * r["config"]["steps"] / 3600, r["hardware"])
        if all(row["test_ratio"] for row in rows):
            out.append(f"| {name} | evaluation only | | | |")
        elif not hours:
            out.append(f"| {name} | 0 of {len(rows)} | not timed | | |")
        else:
            longest = max(hours, key=lambda k: hours[k][0])
            out.append(f"| {name} | {len(hours)} of {len(rows)} | "
                       f"{sum(h for h, _ in hours.values()):,.1f} | {longest} "
                       f"({hours[longest][0]:,.1f} h) | "
                       f"{', '.join(sorted({d for _, d in hours.values()}))} |")
    return "\n".join(out) + "\n"


def _main():
    p = argparse.ArgumentParser(description="Print the results table of finished runs, or with a "
                                "folder write <folder>/TABLES.md, the papers' tables.")
    p.add_argument("what", choices=["table", "seeds"],
                   help="table: one line per run; seeds: runs of one configuration over seeds "
                        "and thread counts, with mean, std and range")
    p.add_argument("files", nargs="+", help="results/*.json, or the folder results/")
    args = p.parse_args()
    if len(args.files) == 1 and os.path.isdir(args.files[0]):
        folder = args.files[0]
        records = [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
                   if f.endswith(".json")]
        path = os.path.join(folder, "TABLES.md")
        with open(path, "w") as f:
            f.write(f"# Headline tables ({len(records)} runs)\n\n"
                    + paper_tables(records, failed_runs(folder))
                    + time_estimates(records))
        print(f"wrote {path}")
        return
    records = [json.load(open(f)) for f in sorted(args.files)]
    print(seeds_table(records) if args.what == "seeds" else format_table(records))


if __name__ == "__main__":
    _main()
