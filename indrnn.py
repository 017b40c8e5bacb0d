"""Independently Recurrent Neural Network (Li et al., CVPR 2018, arXiv 1803.04831) and its deep
residual version (Li et al., "Deep Independently Recurrent Neural Network", arXiv 1910.06251).

    python indrnn.py --task adding --quick           # CPU, minutes: IndRNN against LSTM, T=1000
    python indrnn.py --task adding --seq-len 5000    # the paper's setting at one length
    python indrnn.py --task mnist                    # 6 x 128 with batch norm (Table 2)
    python indrnn.py --task ptb --model res-indrnn   # char-level PTB, T=150 (Table 4)
    python indrnn.py --benchmark                     # one IndRNN layer against nn.LSTM

The model classes (`IndRNN`, `DeepIndRNN` and what they use) need torch alone and can be copied
into other code. Models (`--model`):
    indrnn      stacked IndRNN layers, batch norm between layers (CVPR section 4)
    res-indrnn  residual IndRNN: an IndRNN layer, then pre-activation blocks
                x + [BN - IndRNN - BN - IndRNN](x), a final BN (Deep IndRNN section 4)
    lstm        nn.LSTM baseline
    irnn        ReLU RNN with identity-initialised recurrent matrix (Le et al. 2015) baseline
"""
import contextlib
import functools
import json
import os
import random
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import tasks  # data, metrics, checkpoints and results; the model classes below do not need it

# ----------------------------------------------------------------------------------------------
# Model: needs torch alone.


class IndRNNRecurrence(torch.autograd.Function):
    """h_t = relu(pre_t + u * h_{t-1}) over t = 0..T-1 (CVPR eq. 2, pre_t = W x_t + b).

    A loop of two in-place element-wise ops per step forward and backward, with a hand-written
    backward: the plain autograd loop records T small graphs and, if it indexes a tensor that
    requires grad, makes backward O(T^2). Backward (d_t = dL/dpre_t, d_T = 0):
        d_t = (dL/dh_t + u * d_{t+1}) * relu'(.)      dL/du = sum_{t,b} d_t * h_{t-1}
    Inputs: pre (T, B, H), u (H,), h0 (B, H), all float32 or all float64 on one device.
    Output: h (T, B, H).
    """

    @staticmethod
    def forward(ctx, pre, u, h0):
        h = torch.empty_like(pre)
        h_prev = h0
        # unbind() makes the T per-step views in one call; pre[t] / h[t] would cost one each
        for pre_t, h_t in zip(pre.unbind(0), h.unbind(0)):
            torch.addcmul(pre_t, u, h_prev, out=h_t)  # pre_t + u * h_{t-1}
            h_t.relu_()
            h_prev = h_t
        ctx.save_for_backward(h, u, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        h, u, h0 = ctx.saved_tensors
        grad_pre = torch.empty_like(h)
        d_next = torch.zeros_like(h0)                   # d_{t+1}, zero after the last step
        acc = torch.zeros_like(h0)                      # sum_t d_t * h_{t-1}, per sample
        hs, gs, grads = h.unbind(0), grad_pre.unbind(0), grad_h.unbind(0)
        h_prev = (h0,) + hs[:-1]
        # Everything per step, on (B, H) tensors that stay in cache: one pass over (T, B, H)
        # for grad_u afterwards would read two large tensors from memory again.
        for t in range(h.shape[0] - 1, -1, -1):
            d = gs[t]
            torch.addcmul(grads[t], u, d_next, out=d)   # dL/dh_t + u * d_{t+1}
            d.mul_(hs[t].sign())                        # times relu'(.) = sign(h_t), h_t >= 0
                                                        # (3x faster than a bool mask on CPU)
            acc.addcmul_(d, h_prev[t])
            d_next = d
        return grad_pre, acc.sum(0), grad_pre[0] * u


def indrnn_recurrence(pre, u, h0):
    """The IndRNN recurrence h_t = relu(pre_t + u * h_{t-1}) (CVPR eq. 2) with a fast backward.

    Runs in float32 even under autocast: u is close to 1 (2^(1/1000) = 1.0007) and bfloat16
    cannot tell it from 1.
    Args: pre (T, B, H) = W x_t + b; u (H,) recurrent weight; h0 (B, H) initial state.
    Returns: h (T, B, H), float32 (float64 if pre is float64).
    Raises: ValueError on inconsistent shapes.
    """
    if pre.dim() != 3 or u.shape != pre.shape[2:] or h0.shape != pre.shape[1:]:
        raise ValueError(f"need pre (T, B, H), u (H,), h0 (B, H); got {tuple(pre.shape)}, "
                         f"{tuple(u.shape)}, {tuple(h0.shape)}")
    dtype = torch.float64 if pre.dtype == torch.float64 else torch.float32
    return IndRNNRecurrence.apply(pre.to(dtype), u.to(dtype), h0.to(dtype))


def indrnn_recurrence_reference(pre, u, h0):
    """The same recurrence as a plain autograd loop (for tests and the benchmark). Shapes as
    `indrnn_recurrence`."""
    h, out = h0, []
    for p in pre.unbind(0):  # unbind, not pre[t]: indexing in the loop makes backward O(T^2)
        h = torch.relu(p + u * h)
        out.append(h)
    return torch.stack(out)


class SeqBatchNorm(nn.Module):
    """Batch normalisation of a sequence (T, B, H) -> (T, B, H).

    frames=None: statistics over time and batch, one mean / variance per unit ("BN over time",
    any T). frames=T: frame-wise, one mean / variance per (step, unit), as the IndRNN authors
    use on PTB; needs exactly T steps.
    Raises: ValueError if frame-wise and the input has another number of steps.
    """

    def __init__(self, hidden_size, frames=None):
        super().__init__()
        self.frames = frames
        self.bn = nn.BatchNorm1d(hidden_size * (frames or 1))

    def forward(self, x):
        T, B, H = x.shape
        if self.frames is None:
            return self.bn(x.reshape(T * B, H)).view(T, B, H)
        if T != self.frames:
            raise ValueError(f"frame-wise batch norm was built for T={self.frames}, got T={T}")
        y = self.bn(x.transpose(0, 1).reshape(B, T * H))  # (B, T*H): one statistic per (t, unit)
        return y.view(B, T, H).transpose(0, 1)


class IndRNN(nn.Module):
    """One IndRNN layer (Li et al. 2018, eq. 2): h_t = relu(W x_t + u * h_{t-1} + b).

    Each unit has one recurrent weight u_n and sees only its own past, so units are independent
    in time and their gradient through time is u_n^(T-t) times ReLU derivatives. The input
    projection W x is one matrix product over all steps; the recurrence is `indrnn_recurrence`.

    Args:
        input_size: features D of x.
        hidden_size: units H.
        seq_len: T of the constraint |u| <= mag^(1/T) (section 3.1); None: |u| <= 1.
        mag: the largest gain a unit may give its state over T steps (MAG, paper: 2).
        long_memory: initialise u ~ U(mag^(-1/T), mag^(1/T)) instead of U(0, mag^(1/T)): for the
            last layer of a network read out at the last step only, so that units keep memory
            over the whole sequence (section 4.1).
        input_std: if set, W ~ N(0, input_std) (the authors use 0.001 on the adding problem);
            else PyTorch's default Linear initialisation.
        batch_norm: None, "time" or "frame": batch norm of W x before the recurrence
            (SeqBatchNorm; "frame" needs seq_len).
    Call `constrain_()` after every optimizer step to clip u to [-u_max, u_max].
    Inputs: x (T, B, input_size); h0 (B, H) or None for zeros.
    Outputs: output (T, B, H) float32, the states h_t; h_n (B, H), the last state.
    Raises: ValueError if x is not (T, B, input_size) or h0 not (B, H).
    """

    def __init__(self, input_size, hidden_size, seq_len=None, mag=2.0, long_memory=False,
                 input_std=None, batch_norm=None):
        super().__init__()
        if batch_norm not in (None, "time", "frame") or (batch_norm == "frame" and not seq_len):
            raise ValueError(f"batch_norm must be None, 'time' or 'frame' (frame needs seq_len), "
                             f"got {batch_norm!r} with seq_len={seq_len}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.u_max = mag ** (1.0 / seq_len) if seq_len else 1.0
        self.u_min_init = 1.0 / self.u_max if long_memory else 0.0
        # W x + b in one matrix product (addmm); with batch norm, its shift is b instead
        self.input = nn.Linear(input_size, hidden_size, bias=batch_norm is None)
        self.norm = SeqBatchNorm(hidden_size, seq_len if batch_norm == "frame" else None) \
            if batch_norm else None
        self.u = nn.Parameter(torch.empty(hidden_size))                 # recurrent weight u
        with torch.no_grad():
            self.u.uniform_(self.u_min_init, self.u_max)
            if input_std is not None:
                self.input.weight.normal_(0.0, input_std)
            if self.input.bias is not None:
                self.input.bias.zero_()

    def forward(self, x, h0=None):
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"IndRNN expects x of shape (T, B, {self.input_size}), got "
                             f"{tuple(x.shape)}")
        T, B, _ = x.shape
        if h0 is None:
            h0 = x.new_zeros(B, self.hidden_size, dtype=torch.float32)
        elif h0.shape != (B, self.hidden_size):
            raise ValueError(f"h0 must be (B, H) = ({B}, {self.hidden_size}), got "
                             f"{tuple(h0.shape)}")
        pre = self.input(x)                                             # W x_t + b: (T, B, H)
        if self.norm is not None:
            pre = self.norm(pre)
        h = indrnn_recurrence(pre, self.u, h0)
        return h, h[-1]

    @torch.no_grad()
    def constrain_(self):
        """|u| <= MAG^(1/T) (section 3.1); call after each optimizer step."""
        self.u.clamp_(-self.u_max, self.u_max)


def shared_dropout(x, p, training):
    """Dropout of x (T, B, H) with one mask per sequence, shared across time."""
    if not training or p == 0:
        return x
    mask = F.dropout(x.new_ones(1, x.shape[1], x.shape[2]), p, training=True)  # (1, B, H)
    return x * mask


@contextlib.contextmanager
def _frozen_running_stats(*modules):
    """Batch norms in `modules` do not update running statistics (momentum 0) inside the block:
    the recomputation of a checkpointed layer must not count its batch twice."""
    bns = [m for module in modules for m in module.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, v in zip(bns, saved):
            m.momentum = v


class DeepIndRNN(nn.Module):
    """A stack of IndRNN layers, plain or residual.

    Plain (CVPR section 4, Deep IndRNN Fig. 3a): every layer is W - BN - recurrence + ReLU,
    followed by dropout with a mask shared across time.
    Residual (Deep IndRNN Fig. 3b): a first IndRNN layer, then (layers - 1) / 2 pre-activation
    blocks h + F(h), F = BN - IndRNN - BN - IndRNN (dropout after each IndRNN).
    (Net adds the batch norm of the last layer's output, at the read-out.)

    Args:
        input_size, hidden_size: D and H.
        layers: IndRNN layers in all (residual: odd, >= 3).
        residual: plain (False) or residual (True).
        dropout: rate of the time-shared dropout after each layer.
        batch_norm: "time", "frame" or None (see SeqBatchNorm; "frame" needs seq_len).
        seq_len, mag, input_std: passed to every IndRNN.
        long_memory: long-memory initialisation of the last layer's u (for last-step read-out).
        grad_checkpoint: recompute each layer's forward pass during backward
            (torch.utils.checkpoint); only the layer inputs are kept.
    Inputs: x (T, B, D); states: list of h0 (B, H) per layer, or None.
    Outputs: output (T, B, H); states: list of h_n (B, H) per layer.
    Raises: ValueError for an even residual depth or bad input shapes.
    """

    def __init__(self, input_size, hidden_size, layers, residual=False, dropout=0.0,
                 batch_norm="time", seq_len=None, mag=2.0, long_memory=False, input_std=None,
                 grad_checkpoint=False):
        super().__init__()
        if residual and (layers < 3 or layers % 2 == 0):
            raise ValueError(f"a residual IndRNN has 1 + 2 * blocks layers (3, 5, ..., 11, 21); "
                             f"got {layers}")
        self.residual, self.dropout, self.grad_checkpoint = residual, dropout, grad_checkpoint
        frames = seq_len if batch_norm == "frame" else None
        self.layers = nn.ModuleList()
        self.pre_norms = nn.ModuleList()  # residual: the BN in front of each IndRNN of a block
        for i in range(layers):
            in_block = residual and i > 0
            self.layers.append(IndRNN(
                input_size if i == 0 else hidden_size, hidden_size, seq_len, mag,
                long_memory=long_memory and i == layers - 1, input_std=input_std,
                batch_norm=None if in_block else batch_norm))
            self.pre_norms.append(SeqBatchNorm(hidden_size, frames) if in_block and batch_norm
                                  else nn.Identity())

    def _layer(self, i, h, h0):
        out, h_n = self.layers[i](self.pre_norms[i](h), h0)
        return shared_dropout(out, self.dropout, self.training), h_n

    def forward(self, x, states=None):
        states = states or [None] * len(self.layers)
        h, new_states = x, []
        for i in range(len(self.layers)):
            if self.residual and i % 2 == 1:            # a block is layers (1, 2), (3, 4), ...
                block_input = h
            if self.grad_checkpoint and torch.is_grad_enabled():
                h, h_n = checkpoint(self._layer, i, h, states[i], use_reentrant=False,
                                    context_fn=functools.partial(self._checkpoint_contexts, i))
            else:
                h, h_n = self._layer(i, h, states[i])
            if self.residual and i > 0 and i % 2 == 0:  # end of a block: h + F(h)
                h = block_input + h
            new_states.append(h_n)
        return h, new_states

    def _checkpoint_contexts(self, i):
        """torch.utils.checkpoint's context_fn: nothing around the forward pass of layer i;
        around its recomputation in backward, batch norms keep their running statistics."""
        return contextlib.nullcontext(), _frozen_running_stats(self.pre_norms[i], self.layers[i])

    def constrain_(self):
        """Clips every layer's u (call after each optimizer step)."""
        for layer in self.layers:
            layer.constrain_()


class Net(nn.Module):
    """The recurrent network of `model` plus a linear read-out, for every task of this script.

    Inputs: x (T, B) long tokens (one-hot encoded to n_in) or (T, B, n_in) floats; state from
        the previous call (carried across batches in language modelling) or None.
    Outputs: logits (T, B, n_out) if per_step else (B, n_out) from the last step; new state.
    """

    def __init__(self, model, n_in, n_out, hidden_size, layers, per_step, **indrnn_kwargs):
        super().__init__()
        self.model, self.n_in, self.per_step = model, n_in, per_step
        self.out_norm = None
        if model in ("indrnn", "res-indrnn"):
            self.rnn = DeepIndRNN(n_in, hidden_size, layers, residual=model == "res-indrnn",
                                  long_memory=not per_step, **indrnn_kwargs)
            # BN of the last layer's output too ("after each layer", CVPR 4.2), on what the head
            # reads: the last step alone for classification, whose long-memory units sum over all
            # T steps and sit far outside the statistics of the other steps.
            bn = indrnn_kwargs.get("batch_norm")
            if bn and per_step:
                frames = indrnn_kwargs.get("seq_len") if bn == "frame" else None
                self.out_norm = SeqBatchNorm(hidden_size, frames)
            elif bn:
                self.out_norm = nn.BatchNorm1d(hidden_size)
        elif model == "lstm":
            self.rnn = nn.LSTM(n_in, hidden_size, layers)
        elif model == "irnn":
            self.rnn = nn.RNN(n_in, hidden_size, layers, nonlinearity="relu")
            with torch.no_grad():  # Le et al. 2015: W_hh = I, biases 0, input weights N(0, 0.001)
                for name, p in self.rnn.named_parameters():
                    if name.startswith("weight_hh"):
                        p.copy_(torch.eye(hidden_size))
                    elif name.startswith("weight_ih"):
                        p.normal_(0.0, 0.001)
                    else:
                        p.zero_()
        else:
            raise ValueError(f"unknown model {model!r}")
        self.head = nn.Linear(hidden_size, n_out)

    def forward(self, x, state=None):
        if x.dtype == torch.long:
            x = F.one_hot(x, self.n_in).float()  # (T, B) -> (T, B, n_in)
        h, state = self.rnn(x, state)            # (T, B, H)
        h = h if self.per_step else h[-1]        # (T, B, H) or (B, H)
        if self.out_norm is not None:
            h = self.out_norm(h)
        return self.head(h), state


def detach_state(state):
    """Detaches a recurrent state (a tensor, or a tuple / list of them) from the graph."""
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else state.detach()
    return type(state)(detach_state(s) for s in state)


# ----------------------------------------------------------------------------------------------
# Configuration: the papers' settings (CVPR 2018 section 4, Deep IndRNN section 5); paper-silent
# values are marked.

MODELS = ["indrnn", "res-indrnn", "lstm", "irnn"]
TASKS = ["adding", "mnist", "pmnist", "ptb", "ntu"]
DEFAULTS = dict(hidden_size=128, lr=2e-4, clip=0.0, clip_value=10.0, mag=2.0, dropout=0.0,
                bn="time", weight_decay=1e-4, eval_every=1000, eval_size=1000, lr_drop_every=0,
                input_std=None)
TASK_DEFAULTS = {
    # CVPR 4.1: 2 layers x 128, Adam 2e-4, lr / 10 every 20k steps, batch 50, no batch norm,
    # input weights N(0, 0.001). Steps and the evaluation interval are ours.
    "adding": dict(seq_len=1000, layers=2, batch_size=50, steps=60_000, eval_every=500,
                   lr_drop_every=20_000, bn=None, weight_decay=0.0, input_std=1e-3),
    # CVPR 4.2: 6 x 128, BN, Adam 2e-4, batch 32, lr / 10 every 600k of ~1.2M steps.
    "mnist": dict(seq_len=784, layers=6, batch_size=32, steps=1_200_000, eval_every=2000,
                  lr_drop_every=600_000, eval_size=3000),
    "pmnist": dict(seq_len=784, layers=6, batch_size=32, steps=1_200_000, eval_every=2000,
                   lr_drop_every=600_000, eval_size=3000),
    # CVPR 4.3: 6 x 2000, T=50, frame-wise BN, batch 128, dropout 0.25, lr / 5 on plateau;
    # the number of steps is UNCONFIRMED (ours: 100k, about 128 epochs). The state is carried
    # from batch to batch, so the sequence has no end: |u| <= 1 (MAG = 1), else the test pass
    # (thousands of steps without a reset) overflows.
    "ptb": dict(seq_len=50, layers=6, hidden_size=2000, batch_size=128, steps=100_000,
                eval_every=1000, bn="frame", dropout=0.25, mag=1.0),
    # CVPR 4.4: 6 x 512, 20 frames, batch 128, dropout 0.25 (CS) / 0.1 (CV); steps UNCONFIRMED.
    "ntu": dict(seq_len=20, layers=6, hidden_size=512, batch_size=128, steps=60_000,
                eval_every=300, eval_size=5000, dropout=0.25),
}
MODEL_DEFAULTS = {  # (model, task) -> overrides; baselines are 1 layer (CVPR 4.1)
    ("lstm", "adding"): dict(layers=1, lr=2e-3),
    ("irnn", "adding"): dict(layers=1),
    ("res-indrnn", "mnist"): dict(layers=11),
    ("res-indrnn", "pmnist"): dict(layers=11),
    ("res-indrnn", "ptb"): dict(layers=11, seq_len=150, dropout=0.3),
}
QUICK = {  # CPU scale, minutes
    # T=1000 as in the paper; IndRNN and LSTM train side by side (see cli) for 2000 steps or 4
    # minutes each, whichever comes first
    "adding": dict(seq_len=1000, steps=2000, eval_every=250, eval_size=500, time_budget=4.0),
    "mnist": dict(layers=2, batch_size=64, lr=2e-3, steps=600, eval_every=200, eval_size=1000),
    "pmnist": dict(layers=2, batch_size=64, lr=2e-3, steps=600, eval_every=200, eval_size=1000),
    "ptb": dict(layers=2, hidden_size=256, batch_size=32, lr=2e-3, steps=2000, eval_every=500,
                eval_size=20),
    "ntu": dict(layers=2, steps=600, eval_every=200),
}
# The paper's number for each (task, model); anything else prints UNCONFIRMED.
PAPER = {
    ("adding", "indrnn"): "converges at T=100..5000 (Fig. 2; figure only)",
    ("adding", "lstm"): "fails from T=1000 on (Fig. 2; figure only)",
    ("adding", "irnn"): "fails from T=1000 on (Fig. 2; figure only)",
    ("mnist", "indrnn"): "99.0 (6 layers; 1.0% error)",
    ("pmnist", "indrnn"): "96.0 (6 layers; 4.0% error)",
    ("mnist", "res-indrnn"): "99.39 (12 layers; 0.61% error)",
    ("pmnist", "res-indrnn"): "97.02 (12 layers; 2.98% error)",
    ("mnist", "lstm"): "98.2 (quoted baseline; 1.8% error)",
    ("pmnist", "lstm"): "88.0 (quoted baseline; 12% error)",
    ("mnist", "irnn"): "95.0 (quoted baseline; 5.0% error)",
    ("pmnist", "irnn"): "82.0 (quoted baseline; 18% error)",
    ("ptb", "indrnn"): "1.26 (6 layers, T=50); 1.23 (T=150)",
    ("ptb", "res-indrnn"): "1.19 (11 layers, T=150); 1.21 (21 layers, T=50)",
    ("ptb", "lstm"): "1.36 (quoted baseline)",
    ("ntu-cs", "indrnn"): "81.80 (cross-subject, 6 x 512)",
    ("ntu-cv", "indrnn"): "87.97 (cross-view, 6 x 512)",
}


def parse_args(argv=None):
    p = tasks.common_parser(__doc__.split("\n")[0], TASKS, MODELS)
    p.add_argument("--mag", type=tasks.positive_float,
                   help="MAG of the recurrent weight constraint |u| <= MAG^(1/T)")
    p.add_argument("--dropout", type=float, help="time-shared dropout after each layer")
    p.add_argument("--bn", choices=["time", "frame", "none"],
                   help="batch norm between layers: over time and batch, frame-wise, or none")
    p.add_argument("--weight-decay", type=float, help="L2 on weights (never on u, biases, BN)")
    p.add_argument("--clip-value", type=float, help="clip each gradient value to +-this (0: off)")
    p.add_argument("--lr-drop-every", type=tasks.nonneg_int,
                   help="divide the lr by 10 every N steps (0: never; ptb: / 5 on plateau)")
    p.add_argument("--input-std", type=tasks.positive_float,
                   help="initialise input weights N(0, std) (default: PyTorch's)")
    p.add_argument("--ntu-protocol", choices=["cs", "cv"], default="cs",
                   help="NTU RGB+D: cross-subject or cross-view")
    args = p.parse_args(argv)
    args.seq_len_given, args.batch_size_given = args.seq_len is not None, args.batch_size is not None
    cfg = {**DEFAULTS, **TASK_DEFAULTS[args.task], **MODEL_DEFAULTS.get((args.model, args.task), {}),
           **(QUICK[args.task] if args.quick else {})}
    if args.task == "ntu" and args.ntu_protocol == "cv":
        cfg["dropout"] = 0.1
    if (args.model, args.task) == ("irnn", "adding") and (args.seq_len or cfg["seq_len"]) >= 1000:
        cfg["lr"] = 1e-5  # CVPR 4.1: IRNN needs a smaller lr on long sequences
    if args.model == "res-indrnn" and cfg["layers"] % 2 == 0:
        cfg["layers"] += 1  # presets count plain layers; a residual net has 1 + 2 * blocks
    for k, v in cfg.items():  # command line wins over task defaults
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.bn == "none":
        args.bn = None
    if args.task in ("mnist", "pmnist") and args.seq_len != 784:
        p.error(f"--seq-len is fixed by the images for {args.task}: 784")
    if args.model == "res-indrnn" and (args.layers < 3 or args.layers % 2 == 0):
        p.error(f"--layers {args.layers}: res-indrnn has 1 + 2 * blocks layers (3, 5, ..., 11)")
    if args.grad_checkpoint and args.model not in ("indrnn", "res-indrnn"):
        p.error("--grad-checkpoint applies to indrnn and res-indrnn (nn.LSTM / nn.RNN are fused)")
    if not 0 <= args.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
    args.tag = args.tag or (f"T{args.seq_len}" + (f"-{args.ntu_protocol}" if args.task == "ntu"
                                                    else "") + ("-quick" if args.quick else ""))
    return args


def build_model(args, task):
    kw = {}
    if args.model in ("indrnn", "res-indrnn"):
        kw = dict(dropout=args.dropout, batch_norm=args.bn, seq_len=args.seq_len, mag=args.mag,
                  input_std=args.input_std, grad_checkpoint=args.grad_checkpoint)
    return Net(args.model, task.n_in, task.n_out, args.hidden_size, args.layers,
               per_step=task.kind == "lm", **kw)


def make_optimizer(model, args):
    """Adam; weight decay on weight matrices only, never on u, biases or batch norm (the authors'
    rule: all of these are the 1-D parameters)."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return torch.optim.Adam([dict(params=decay, weight_decay=args.weight_decay),
                             dict(params=no_decay, weight_decay=0.0)], lr=args.lr)


@torch.no_grad()
def evaluate(model, task, split, device, amp_dtype, limit=None):
    """Metrics of `model` on a split (see tasks.summarize). Language models carry their state
    from one window to the next, as in training."""
    model.eval()
    total, state = {}, None
    for x, y in task.eval_batches(split, limit=limit):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out, state = model(x, state if task.kind == "lm" else None)
        tasks.add_stats(total, tasks.loss_and_stats(task.kind, out, y)[1])
    model.train()
    return tasks.summarize(task.kind, total, split)


def run_benchmark(args, device, amp_dtype):
    """Forward+backward time of one IndRNN layer (input projection + recurrence) against nn.LSTM
    of the same size in the same run, and the plain autograd loop for reference. Two input
    sizes: D = H (a layer inside a deep network) and D = 2 (the adding problem, where the Deep
    IndRNN paper measured its speed-ups)."""
    B = args.batch_size if args.batch_size_given else 100  # the setting: B=100, H=128
    H = args.hidden_size
    lengths = [args.seq_len] if args.seq_len_given else [784, 1000, 5000]
    print(f"benchmark on {tasks.hardware(device)}, torch {torch.__version__}: one layer, B={B}, "
          f"H={H}, forward + backward of sum(output), amp={amp_dtype}")
    mem_name = "peak CUDA MiB" if device.type == "cuda" else "saved-for-backward MiB"
    print(f"| D | T | layer | ms / batch | speed-up over nn.LSTM | {mem_name} |\n"
          f"|---|---|---|---|---|---|")
    for D in (H, 2):
        for T in lengths:
            x = torch.randn(T, B, D, device=device)
            layer = IndRNN(D, H, seq_len=T).to(device)
            lstm = nn.LSTM(D, H).to(device)

            def plain_loop(x):  # autograd through T steps, unbind() as in the reference
                pre = layer.input(x)
                return indrnn_recurrence_reference(pre, layer.u, x.new_zeros(B, H)), None

            def naive_loop(x):  # the trap: pre[t] of a tensor that requires grad, O(T^2)
                pre, h, out = layer.input(x), x.new_zeros(B, H), []
                for t in range(T):
                    h = torch.relu(pre[t] + layer.u * h)
                    out.append(h)
                return torch.stack(out), None
            runs = [("nn.LSTM", lstm), ("IndRNN", layer), ("IndRNN, autograd loop", plain_loop)]
            if T <= 1000:  # the naive loop's backward is quadratic in T
                runs.append(("IndRNN, naive loop indexing pre[t]", naive_loop))
            lstm_sec = None
            for name, model in runs:
                def fn():
                    with torch.autocast(device.type, dtype=amp_dtype,
                                        enabled=amp_dtype is not None):
                        out = model(x)[0]
                    out.float().sum().backward()
                sec, mem = tasks.benchmark(fn, device)
                lstm_sec = lstm_sec or sec
                speedup = lstm_sec / sec
                print(f"| {D} | {T} | {name} | {sec * 1e3:.1f} | "
                      f"{speedup:.{1 if speedup >= 0.1 else 3}f}x | {mem:.1f} |", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = tasks.pick_device(args.device)
    amp_dtype, use_scaler = tasks.amp_settings(args.amp, device)
    torch.manual_seed(args.seed)
    if args.benchmark:
        return run_benchmark(args, device, amp_dtype)
    try:
        task = tasks.make_task(args.task, args.seq_len, args.batch_size, args.data_dir, args.seed,
                               args.test_seq_len, eval_size=args.eval_size,
                               ntu_protocol=args.ntu_protocol)
    except tasks.DataError as e:
        raise SystemExit(f"error: {e}")
    model = build_model(args, task).to(device)
    opt = make_optimizer(model, args)
    if task.kind == "lm":  # PTB: lr / 5 when validation BPC stops improving (patience 20 evals)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.2, patience=20)
    else:                  # lr / 10 every lr_drop_every steps
        sched = torch.optim.lr_scheduler.StepLR(opt, args.lr_drop_every or 10**12, gamma=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    metric, larger_is_better = tasks.SELECT[task.kind]
    constrain = getattr(model.rnn, "constrain_", lambda: None)  # IndRNN models only

    name = f"indrnn-{args.task}-{args.model}-{args.tag}"
    last_path = os.path.join(args.out_dir, "ckpt", name + ".pt")
    best_path = os.path.join(args.out_dir, "ckpt", name + "-best.pt")
    step, best, history, elapsed = 0, None, [], 0.0
    if args.resume:
        if not os.path.exists(last_path):
            raise SystemExit(f"error: no checkpoint {last_path} to resume from (check --task, "
                             f"--model, --tag / --seq-len / --quick and --out-dir)")
        ck = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        scaler.load_state_dict(ck["scaler"])
        tasks.set_rng_state(ck["rng"])
        step, best, history, elapsed = ck["step"], ck["best"], ck["history"], ck["elapsed"]

    print(f"== indrnn.py | task: {task.description}")
    print(f"== config: " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))
    print(f"== device: {device} ({tasks.hardware(device)}), amp={amp_dtype}, seed={args.seed}, "
          f"params={sum(p.numel() for p in model.parameters()):,}"
          + (f", resumed at step {step}" if step else ""))

    def save_last():
        tasks.save_checkpoint(last_path, dict(
            model=model.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
            scaler=scaler.state_dict(), rng=tasks.rng_state(), step=step, best=best,
            history=history, elapsed=elapsed, config=vars(args)))

    from tqdm import tqdm
    t_start = time.time() - elapsed
    bar = tqdm(total=args.steps, initial=step, disable=step >= args.steps, mininterval=5,
               desc=name, dynamic_ncols=True)
    state = None  # carried across batches in language modelling (the windows are contiguous)
    while step < args.steps:
        x, y = (v.to(device) for v in task.train_batch(step))
        if task.kind == "lm" and random.Random(args.seed * 1_000_003 + step).random() < 0.1:
            state = None  # the authors reset the carried state with probability 1/10 per batch
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out, state = model(x, detach_state(state) if task.kind == "lm" else None)
        loss, _ = tasks.loss_and_stats(task.kind, out, y, stats=False)
        if not torch.isfinite(loss):
            bar.close()
            raise SystemExit(f"error: non-finite loss {loss.item()} at step {step}; stopping. "
                             f"The last good checkpoint is {last_path} (step "
                             f"{history[-1]['step'] if history else 0}).")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if args.clip_value:
            nn.utils.clip_grad_value_(model.parameters(), args.clip_value)
        if args.clip:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        scaler.step(opt)
        scaler.update()
        constrain()  # |u| <= MAG^(1/T) after every update (section 3.1)
        if task.kind != "lm":
            sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        out_of_time = args.time_budget and time.time() - t_start > args.time_budget * 60
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            val = evaluate(model, task, "valid", device, amp_dtype, limit=args.eval_size)
            if task.kind == "lm":
                sched.step(val[metric])
            elapsed = time.time() - t_start
            history.append(dict(step=step, loss=loss.item(), seconds=round(elapsed, 1),
                                lr=opt.param_groups[0]["lr"], **val))
            if best is None or (val[metric] > best if larger_is_better else val[metric] < best):
                best = val[metric]
                tasks.save_checkpoint(best_path, dict(model=model.state_dict(), step=step))
            save_last()
            bar.write(f"step {step}: loss {loss.item():.4f} "
                      + " ".join(f"{k} {v:.4f}" for k, v in val.items())
                      + f" (best {metric} {best:.4f}, {elapsed / 60:.1f} min)")
        if out_of_time:
            bar.write(f"time budget of {args.time_budget} min reached at step {step}")
            break
    bar.close()

    # Report the test metric at the best validation checkpoint.
    ck = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(ck["model"])
    test = evaluate(model, task, "test", device, amp_dtype, limit=args.test_size)
    val = evaluate(model, task, "valid", device, amp_dtype, limit=args.eval_size)
    record = dict(
        script="indrnn.py", config=vars(args), task=task.description,
        metric=metric.replace("valid", "test"),
        paper=PAPER.get((args.task + (f"-{args.ntu_protocol}" if args.task == "ntu" else ""),
                         args.model), "UNCONFIRMED"),
        metrics={**test, **val}, best_step=ck["step"], steps_done=step, history=history,
        wall_seconds=elapsed, peak_memory_mb=tasks.peak_memory_mb(device), device=str(device),
        hardware=tasks.hardware(device), torch=torch.__version__, git_commit=tasks.git_commit(),
        command="python indrnn.py " + " ".join(sys.argv[1:] if argv is None else argv))
    suffix = f"-test{args.test_seq_len}" if args.test_seq_len not in (None, args.seq_len) else ""
    path = tasks.write_results(os.path.join(args.out_dir, name + suffix + ".json"), record)
    print(f"== test at best validation step {ck['step']}: "
          + " ".join(f"{k} {v:.4f}" for k, v in test.items()) + f" | paper: {record['paper']}")
    print(f"== wrote {path}")
    return record


def cli(argv=None):
    """`python indrnn.py ...`. `--task adding --quick` without --model trains IndRNN and the LSTM
    baseline side by side, one CPU thread each (the recurrence is too small to gain from more),
    and prints both results: the paper's contrast in minutes."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not (args.quick and args.task == "adding" and not args.benchmark
            and not any(a.startswith("--model") for a in argv)):
        return main(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    log = os.path.join(args.out_dir, f"indrnn-adding-lstm-{args.tag}.log")
    print(f"== --quick: IndRNN here, the LSTM baseline in parallel (its log: {log})")
    with open(log, "w") as f:
        lstm = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv,
                                 "--model", "lstm", "--threads", "1"], stdout=f, stderr=f)
        try:
            records = [main(argv + ["--model", "indrnn", "--threads", "1"])]
        finally:
            lstm.wait()
    if lstm.returncode != 0:
        raise SystemExit(f"error: the LSTM baseline failed (exit {lstm.returncode}); see {log}")
    with open(os.path.join(args.out_dir, f"indrnn-adding-lstm-{args.tag}.json")) as f:
        records.append(json.load(f))
    print("\n" + tasks.format_table(records))
    return records


if __name__ == "__main__":
    cli()
