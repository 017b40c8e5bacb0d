"""Independently Recurrent Neural Network (Li et al., CVPR 2018, arXiv 1803.04831) and its deep
residual version (Li et al., "Deep Independently Recurrent Neural Network", arXiv 1910.06251).

    python indrnn.py --task adding --quick           # CPU, minutes: IndRNN against LSTM, T=1000
    python indrnn.py --task adding --seq-len 5000    # the paper's setting at one length
    python indrnn.py --task mnist                    # 6 x 128 with batch norm (Table 2)
    python indrnn.py --task ptb --model res-indrnn   # char-level PTB, T=150 (Table 4)
    python indrnn.py --benchmark                     # one IndRNN layer against nn.LSTM
    python indrnn.py --task adding --grad-flow       # how far back the gradient reaches

The model classes `IndRNN` and `DeepIndRNN` need torch alone and can be copied into other code:
each docstring names the helpers to copy with it. Shapes are time-major: x (T, B, D). Models
(`--model`):
    indrnn      stacked IndRNN layers, batch norm between layers (CVPR sections 3.2, 4)
    res-indrnn  residual IndRNN in the authors' layout: an input projection x = W_0 input, then
                blocks x + [BN - recurrence - dropout - W - BN - recurrence - dropout - W](x),
                then a last BN - recurrence (CVPR section 3.2, Deep IndRNN section 4)
    lstm        nn.LSTM baseline
    irnn        ReLU RNN with identity-initialised recurrent matrix (Le et al. 2015) baseline
    rnn         tanh RNN (nn.RNN), the classic recurrent network, for --grad-flow
Sections of this file: the model (torch alone), the NTU RGB+D data (the one task only this script
uses; the others come from tasks.py), the papers' configurations, training and the command line.
"""
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import tasks  # shared data, metrics, checkpoints and results; the model classes do not need it

# ----------------------------------------------------------------------------------------------
# Model: needs torch alone.


class IndRNNRecurrence(torch.autograd.Function):
    """h_t = relu(pre_t + u * h_{t-1}) over t = 0..T-1 (CVPR eq. 2 with pre_t = W x_t + b);
    call it through `indrnn_recurrence`, which checks shapes and dtypes.

    A loop of two in-place element-wise ops per step forward and backward, with a hand-written
    backward: the plain autograd loop records T small graphs and, if it indexes a tensor that
    requires grad, makes backward O(T^2). Backward (d_t = dL/dpre_t, d_T = 0):
        d_t = (dL/dh_t + u * d_{t+1}) * relu'(.)      dL/du = sum_{t,b} d_t * h_{t-1}
    The gradient through time of unit n is u_n^(T-t) times ReLU derivatives (CVPR section 3.1),
    which is what the constraint on u bounds.
    Inputs: pre (T, B, H), u (H,), h0 (B, H), all float32 or all float64 on one device.
    Output: h (T, B, H), the same dtype.
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


def indrnn_recurrence(pre, u, h0, impl="auto"):
    """The IndRNN recurrence h_t = relu(pre_t + u * h_{t-1}) (CVPR eq. 2) with a fast backward.

    Runs in float32 even under autocast: u is close to 1 (2^(1/1000) = 1.0007) and bfloat16
    cannot tell it from 1.
    Args: pre (T, B, H) = W x_t + b; u (H,) recurrent weight; h0 (B, H) initial state.
        impl: "loop" (IndRNNRecurrence, torch alone), "triton" (IndRNNRecurrenceTriton, one fused
        kernel; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) or "auto": Triton for
        CUDA tensors when triton imports and its first run on the device agrees with the loop
        (else a warning and the loop), the loop otherwise, and under torch.compile (which
        traces the loop). The Triton section of this file is optional: copied out without it,
        "auto" is the loop.
    Returns: h (T, B, H), float32 (float64 if pre is float64).
    Raises: ValueError on inconsistent shapes, an unknown impl, or impl="triton" where Triton
        cannot run.
    """
    if impl not in ("auto", "loop", "triton"):
        raise ValueError(f"impl must be 'auto', 'loop' or 'triton', got {impl!r}")
    if pre.dim() != 3 or u.shape != pre.shape[2:] or h0.shape != pre.shape[1:]:
        raise ValueError(f"need pre (T, B, H), u (H,), h0 (B, H); got {tuple(pre.shape)}, "
                         f"{tuple(u.shape)}, {tuple(h0.shape)}")
    dtype = torch.float64 if pre.dtype == torch.float64 else torch.float32
    pre, u, h0 = pre.to(dtype), u.to(dtype), h0.to(dtype)
    if impl == "triton" or (impl == "auto" and pre.is_cuda and not torch.compiler.is_compiling()):
        use_triton = globals().get("_use_triton")  # absent if copied out without the section
        if use_triton is None and impl == "triton":
            raise ValueError("impl='triton' needs the Triton section of indrnn.py")
        if use_triton is not None and use_triton(pre, impl == "triton"):
            return IndRNNRecurrenceTriton.apply(pre.contiguous(), u.contiguous(),
                                                h0.contiguous())
    return IndRNNRecurrence.apply(pre, u, h0)


def indrnn_recurrence_reference(pre, u, h0):
    """The same recurrence (CVPR eq. 2) as a plain autograd loop, for tests and the benchmark.
    Args: pre (T, B, H), u (H,), h0 (B, H). Returns: h (T, B, H). No shape checks."""
    h, out = h0, []
    for p in pre.unbind(0):  # unbind, not pre[t]: indexing in the loop makes backward O(T^2)
        h = torch.relu(p + u * h)
        out.append(h)
    return torch.stack(out)


# Optional fused recurrence (Triton). The model classes work without it (torch alone);
# indrnn_recurrence uses it for CUDA tensors when `import triton` works.
#
# Why one kernel that loops over time: IndRNNRecurrence launches 2 kernels per step forward
# (addcmul, relu_) and 4 backward (addcmul, sign, mul_, addcmul_), each on only B*H elements
# (128 * 512 * 4 bytes = 256 KiB), so on a GPU it is launch-bound (~5 us a launch, 6 T launches
# per batch) rather than bandwidth-bound. Units are independent (CVPR eq. 2), so each program can
# own a block of the B*H columns, keep h_{t-1} (or d_{t+1}) in registers and walk through time
# itself: one launch forward, one backward, every element of (T, B, H) read or written once, and
# the time is that of moving the bytes (bandwidth-bound).

_TRITON_BLOCK = 128       # columns (of the B*H) per program
_TRITON_CACHE = {}        # interpret flag -> (forward kernel, backward kernel), built on first use
_TRITON_OK = {}           # (device, interpret flag) -> verdict of the first-use check


def _triton_interpret():
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1). Triton reads the
    variable when a kernel is decorated, which is why the kernels are built lazily, per mode."""
    import triton
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _triton_kernels():
    """(forward, backward) Triton kernels of the recurrence, built on the first call in the
    current mode (compiled or interpreted). Raises ImportError without triton."""
    key = _triton_interpret()
    if key in _TRITON_CACHE:
        return _TRITON_CACHE[key]
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["T"])
    def forward_kernel(pre_ptr, u_ptr, h0_ptr, h_ptr, T, N, H, BLOCK: tl.constexpr):
        # pre, h: (T, N) with N = B*H columns, contiguous; u: (H,); h0: (N,).
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        u = tl.load(u_ptr + cols % H, mask=mask, other=0.0)
        h = tl.load(h0_ptr + cols, mask=mask, other=0.0)
        pre_ptrs, h_ptrs = pre_ptr + cols, h_ptr + cols   # pointers advance by N per step
        for _ in range(T):
            h = tl.maximum(tl.load(pre_ptrs, mask=mask, other=0.0) + u * h, 0.0)
            tl.store(h_ptrs, h, mask=mask)
            pre_ptrs += N
            h_ptrs += N

    @triton.jit(do_not_specialize=["T", "last"])
    def backward_kernel(grad_h_ptr, h_ptr, u_ptr, h0_ptr, grad_pre_ptr, grad_h0_ptr, part_ptr,
                        T, last, N, H, BLOCK: tl.constexpr):
        # Walks t = T-1 .. 0 from offset last = (T-1) * N (computed on the host: int64 if big).
        # d_t = (grad_h_t + u * d_{t+1}) * relu'(h_t); part = sum_t d_t * h_{t-1} per column.
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        u = tl.load(u_ptr + cols % H, mask=mask, other=0.0)
        offs = cols + last
        gh_ptrs, h_ptrs, gp_ptrs = grad_h_ptr + offs, h_ptr + offs, grad_pre_ptr + offs
        h_t = tl.load(h_ptrs, mask=mask, other=0.0)
        d = h_t * 0.0                                          # d_{t+1}, zero after the last step
        acc = h_t * 0.0
        for _ in range(T - 1):                                 # t = T-1 .. 1: h_{t-1} is in h
            h_ptrs -= N
            h_prev = tl.load(h_ptrs, mask=mask, other=0.0)
            d = tl.where(h_t > 0.0, tl.load(gh_ptrs, mask=mask, other=0.0) + u * d, 0.0)
            tl.store(gp_ptrs, d, mask=mask)
            acc += d * h_prev
            h_t = h_prev
            gh_ptrs -= N
            gp_ptrs -= N
        h_prev = tl.load(h0_ptr + cols, mask=mask, other=0.0)  # t = 0: h_{-1} = h0
        d = tl.where(h_t > 0.0, tl.load(gh_ptrs, mask=mask, other=0.0) + u * d, 0.0)
        tl.store(gp_ptrs, d, mask=mask)
        acc += d * h_prev
        tl.store(grad_h0_ptr + cols, u * d, mask=mask)
        tl.store(part_ptr + cols, acc, mask=mask)

    _TRITON_CACHE[key] = (forward_kernel, backward_kernel)
    return _TRITON_CACHE[key]


def _triton_launch(kernel, n_cols, device, *args):
    """Launches `kernel` on a 1-D grid of ceil(n_cols / _TRITON_BLOCK) programs."""
    grid = (-(-n_cols // _TRITON_BLOCK),)
    if device.type == "cuda":  # FMA for pre + u * h, as Triton's default (explicit: no warning)
        with torch.cuda.device(device):
            kernel[grid](*args, BLOCK=_TRITON_BLOCK, enable_fp_fusion=True)
    else:
        kernel[grid](*args, BLOCK=_TRITON_BLOCK)


class IndRNNRecurrenceTriton(torch.autograd.Function):
    """IndRNNRecurrence as two fused Triton kernels: h_t = relu(pre_t + u * h_{t-1}) (CVPR eq. 2).

    Each program owns _TRITON_BLOCK of the B*H columns and loops over the T steps (the comment
    at the start of this section says why). Forward: reads pre, writes h. Backward, t = T-1 .. 0:
        d_t = (dL/dh_t + u * d_{t+1}) * relu'(h_t),   dL/dpre_t = d_t,   dL/dh0 = u * d_0,
        dL/du = sum_b [sum_t d_t * h_{t-1}]  (per-column partials (B, H), summed by torch),
    so the gradient through time of unit n carries u_n^(T-t) (CVPR section 3.1).
    Inputs: pre (T, B, H), u (H,), h0 (B, H): contiguous, one dtype (float32; float64 works too)
    and one device (CUDA, or CPU under TRITON_INTERPRET=1). Output: h (T, B, H).
    Use it through indrnn_recurrence(..., impl="triton" or "auto").
    """

    @staticmethod
    def forward(ctx, pre, u, h0):
        forward_kernel, _ = _triton_kernels()
        T, B, H = pre.shape
        h = torch.empty_like(pre)
        if T > 0 and B * H > 0:
            _triton_launch(forward_kernel, B * H, pre.device, pre, u, h0, h, T, B * H, H)
        ctx.save_for_backward(h, u, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        _, backward_kernel = _triton_kernels()
        h, u, h0 = ctx.saved_tensors
        T, B, H = h.shape
        grad_h = grad_h.to(h.dtype).contiguous()  # sum().backward() gives an expanded tensor
        grad_pre = torch.empty_like(h)
        if T == 0 or B * H == 0:
            return grad_pre, torch.zeros_like(u), torch.zeros_like(h0)
        grad_h0, part = torch.empty_like(h0), torch.empty_like(h0)
        _triton_launch(backward_kernel, B * H, h.device, grad_h, h, u, h0, grad_pre, grad_h0,
                       part, T, (T - 1) * B * H, B * H, H)
        return grad_pre, part.sum(0), grad_h0


def _check_triton(device):
    """Runs the Triton kernels and the loop on a small random input on `device` (forward and
    the three gradients, B*H not a multiple of the block). Returns None if they agree, else a
    one-line reason (disagreement, or the kernel's error: compilation, driver, ...)."""
    T, B, H = 9, 3, _TRITON_BLOCK // 2 + 3
    results = []
    try:  # may be called under no_grad, inference_mode, autocast or inside the forward of
        # torch.utils.checkpoint, whose recomputation will not run this check again: the
        # identity hooks keep the check's saved tensors out of the count checkpoint keeps
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device.type, enabled=False), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            g = torch.Generator().manual_seed(0)
            pre = torch.randn(T, B, H, generator=g)
            u = torch.rand(H, generator=g) * 2.4 - 1.2
            h0 = torch.rand(B, H, generator=g)
            upstream = torch.randn(T, B, H, generator=g).to(device)
            for fn in (IndRNNRecurrenceTriton.apply, IndRNNRecurrence.apply):
                leaves = [t.to(device).requires_grad_() for t in (pre, u, h0)]
                h = fn(*leaves)
                grads = torch.autograd.grad((h * upstream).sum(), leaves)
                results.append([h, *grads])
    except Exception as e:  # noqa: BLE001 - any failure of the kernel means: use the loop
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        return f"failed ({type(e).__name__}: {msg})"
    names = ("h", "grad pre", "grad u", "grad h0")
    bad = [n for n, a, b in zip(names, *results)
           if not torch.allclose(a, b, rtol=1e-4, atol=1e-5)]
    return f"disagrees with the loop ({', '.join(bad)})" if bad else None


def _use_triton(x, forced):
    """Whether indrnn_recurrence runs the Triton kernels for tensors like x (forced: impl was
    "triton", else "auto" with a CUDA tensor). The first use on a device checks the kernels
    against the loop (_check_triton); on failure it warns once and the verdict (loop) is cached.
    Raises: ValueError if forced and triton is missing, or x is on CPU without TRITON_INTERPRET=1.
    """
    import warnings
    try:
        interpret = _triton_interpret()
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
        if forced:
            raise ValueError(f"impl='triton' needs the triton package (pip install triton): "
                             f"{type(e).__name__}") from None
        if not isinstance(e, ImportError) and "import" not in _TRITON_OK:
            warnings.warn(f"IndRNN: import triton failed ({type(e).__name__}); using the loop",
                          RuntimeWarning, stacklevel=3)
        _TRITON_OK["import"] = False
        return False
    if x.device.type != "cuda" and not interpret:
        raise ValueError(f"impl='triton' runs on CUDA tensors, or on {x.device.type} tensors only "
                         f"under TRITON_INTERPRET=1; use impl='loop' or 'auto'")
    key = (str(x.device), interpret)
    if key not in _TRITON_OK:
        reason = _check_triton(x.device)
        if reason is not None:
            warnings.warn(f"IndRNN Triton kernel {reason} on {x.device}; using the loop",
                          RuntimeWarning, stacklevel=3)
        _TRITON_OK[key] = reason is None
    return _TRITON_OK[key]


def recurrence_impl(device):
    """"triton" or "loop": what indrnn_recurrence(impl="auto") runs on `device` (runs the
    first-use check on CUDA)."""
    x = torch.empty(0, device=device)
    return "triton" if x.is_cuda and _use_triton(x, False) else "loop"


class SeqBatchNorm(nn.Module):
    """Batch normalisation of a sequence (T, B, H) -> (T, B, H), the BN between IndRNN layers
    (CVPR sections 3.2 and 4).

    Args:
        hidden_size: H.
        frames: None: statistics over time and batch, one mean / variance per unit ("BN over
            time", any T). An int T: frame-wise, one mean / variance per (step, unit), as the
            IndRNN authors use on PTB, with one scale and shift per unit shared by all steps (as
            in the authors' code); the input must then have exactly T steps.
    Raises: ValueError if frame-wise and the input has another number of steps.
    """

    def __init__(self, hidden_size, frames=None):
        super().__init__()
        self.frames = frames
        if frames is None:
            self.bn = nn.BatchNorm1d(hidden_size)
        else:  # statistics per (step, unit); the affine part is the (H,) weight and bias below
            self.bn = nn.BatchNorm1d(hidden_size * frames, affine=False)
            self.weight = nn.Parameter(torch.ones(hidden_size))
            self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x):
        T, B, H = x.shape
        if self.frames is None:
            return self.bn(x.reshape(T * B, H)).view(T, B, H)
        if T != self.frames:
            raise ValueError(f"frame-wise batch norm was built for T={self.frames}, got T={T}")
        y = self.bn(x.transpose(0, 1).reshape(B, T * H))  # (B, T*H): one statistic per (t, unit)
        return y.view(B, T, H).transpose(0, 1) * self.weight + self.bias  # (T, B, H)


class IndRNN(nn.Module):
    """One IndRNN layer (CVPR section 3, eq. 2): h_t = relu(W x_t + u * h_{t-1} + b).

    Each unit has one recurrent weight u_n and sees only its own past, so units are independent
    in time and their gradient through time is u_n^(T-t) times ReLU derivatives. The input
    projection W x is one matrix product over all steps; the recurrence is `indrnn_recurrence`.

    Args:
        input_size: features D of x.
        hidden_size: units H.
        seq_len: T of the constraint |u| <= mag^(1/T) (CVPR section 3.1); None: |u| <= 1.
        mag: the largest gain a unit may give its state over T steps (MAG, paper: 2).
        long_memory: initialise u ~ U(mag^(-1/T), mag^(1/T)) instead of U(0, mag^(1/T)): for the
            last layer of a network read out at the last step only, so that units keep memory
            over the whole sequence (section 4.1).
        input_std: if set, W ~ N(0, input_std) (the authors use 0.001 on the adding problem);
            else kaiming_uniform_(a=8) as in the authors' code (bound about 0.027 at fan-in
            128). The bias starts at 0.
        batch_norm: None, "time" or "frame": batch norm of W x before the recurrence
            (SeqBatchNorm; "frame" needs seq_len).
    Call `constrain_()` after every optimizer step to clip u to [-u_max, u_max].
    Inputs: x (T, B, input_size); h0 (B, H) or None for zeros.
    Outputs: output (T, B, H) float32, the states h_t; h_n (B, H), the last state.
    Raises: ValueError for an unknown batch_norm, "frame" without seq_len, x not
        (T, B, input_size) or h0 not (B, H).

    Copy with it: IndRNNRecurrence, indrnn_recurrence, SeqBatchNorm.
    They need only `import torch` and `import torch.nn as nn`.
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
            else:
                nn.init.kaiming_uniform_(self.input.weight, a=8)
            if self.input.bias is not None:
                self.input.bias.zero_()

    def forward(self, x, h0=None):
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"IndRNN expects x of shape (T, B, {self.input_size}), got "
                             f"{tuple(x.shape)}")
        return self.recur(self.input(x), h0)                           # W x_t + b: (T, B, H)

    def recur(self, pre, h0=None):
        """Batch norm (if any) and the recurrence on pre-activations pre (T, B, H), W x_t + b
        or anything added to it (DeepIndRNN's residual shortcut). Returns (output, h_n)."""
        T, B, _ = pre.shape
        if h0 is None:
            h0 = pre.new_zeros(B, self.hidden_size, dtype=torch.float32)
        elif h0.shape != (B, self.hidden_size):
            raise ValueError(f"h0 must be (B, H) = ({B}, {self.hidden_size}), got "
                             f"{tuple(h0.shape)}")
        if self.norm is not None:
            pre = self.norm(pre)
        h = indrnn_recurrence(pre, self.u, h0)
        return h, h[-1]

    @torch.no_grad()
    def constrain_(self):
        """|u| <= MAG^(1/T) (CVPR section 3.1); call after each optimizer step."""
        self.u.clamp_(-self.u_max, self.u_max)


def shared_dropout(x, p, training):
    """Dropout of x (T, B, H) -> (T, B, H) with one mask per sequence, the same at every step:
    a unit is dropped for the whole sequence, rather than its state being cut at random steps.
    p: drop rate in [0, 1); training False or p == 0 returns x itself."""
    if not training or p == 0:
        return x
    mask = F.dropout(x.new_ones(1, x.shape[1], x.shape[2]), p, training=True)  # (1, B, H)
    return x * mask


class _FrozenRunningStats:
    """Context manager: inside the block, the batch norms in `modules` do not update their
    running statistics (momentum 0), so that recomputing a checkpointed layer in backward does
    not count its batch twice. With no modules it does nothing. A class with __enter__ / __exit__
    rather than contextlib.contextmanager, so that the model section needs torch alone."""

    def __init__(self, *modules):
        self.bns = [m for module in modules for m in module.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [m.momentum for m in self.bns]
        for m in self.bns:
            m.momentum = 0.0

    def __exit__(self, *exc):
        for m, v in zip(self.bns, self.saved):
            m.momentum = v
        return False  # exceptions propagate


class DeepIndRNN(nn.Module):
    """A stack of IndRNN layers, plain or residual (CVPR section 3.2, multiple-layer IndRNN).

    Plain (CVPR sections 3.2 and 4, Deep IndRNN Fig. 3a): every layer is W - BN - recurrence +
    ReLU, followed by dropout with a mask shared across time.
    Residual (CVPR section 3.2, Deep IndRNN Fig. 3b), the layout of the authors' code: the same
    layers, with a shortcut between pre-activations. Layer 0's projection x_0 = W_0 input
    starts it; blocks x_b = x_(b-1) + F(x_(b-1)), F = [BN - recurrence - dropout - W - BN -
    recurrence - dropout - W], are layers (0, 1) + the projection of layer 2, (2, 3) + that of
    layer 4, ...: every even layer i >= 2 adds the shortcut to its W h before its BN. The last
    layer's BN - recurrence is the authors' extra IndRNN after the last block.
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
    Call `constrain_()` after every optimizer step (clips every layer's u, CVPR section 3.1).
    Inputs: x (T, B, D); states: list of h0 (B, H) per layer, or None.
    Outputs: output (T, B, H); states: list of h_n (B, H) per layer.
    Raises: ValueError for a residual depth that is not 3, 5, 7, ..., or bad input shapes.

    Copy with it: IndRNN, IndRNNRecurrence, indrnn_recurrence, SeqBatchNorm, shared_dropout,
    _FrozenRunningStats.
    They need only `import torch`, `import torch.nn as nn`, `import torch.nn.functional as F`
    and `from torch.utils.checkpoint import checkpoint`.
    """

    def __init__(self, input_size, hidden_size, layers, residual=False, dropout=0.0,
                 batch_norm="time", seq_len=None, mag=2.0, long_memory=False, input_std=None,
                 grad_checkpoint=False):
        super().__init__()
        if residual and (layers < 3 or layers % 2 == 0):
            raise ValueError(f"a residual IndRNN has 1 + 2 * blocks layers (3, 5, ..., 11, 21); "
                             f"got {layers}")
        self.residual, self.dropout, self.grad_checkpoint = residual, dropout, grad_checkpoint
        self.layers = nn.ModuleList(
            IndRNN(input_size if i == 0 else hidden_size, hidden_size, seq_len, mag,
                   long_memory=long_memory and i == layers - 1, input_std=input_std,
                   batch_norm=batch_norm)
            for i in range(layers))

    def _layer(self, i, h, h0, shortcut):
        """Layer i on h (T, B, H_in): pre = W h (+ shortcut), BN, recurrence, dropout.
        Returns (output (T, B, H), h_n (B, H), pre (T, B, H))."""
        pre = self.layers[i].input(h)
        if shortcut is not None:
            pre = pre + shortcut                        # x_b = x_(b-1) + F(x_(b-1))
        out, h_n = self.layers[i].recur(pre, h0)
        return shared_dropout(out, self.dropout, self.training), h_n, pre

    def forward(self, x, states=None):
        states = states or [None] * len(self.layers)
        h, x_block, new_states = x, None, []
        for i in range(len(self.layers)):
            shortcut = x_block if self.residual and i >= 2 and i % 2 == 0 else None
            if self.grad_checkpoint and torch.is_grad_enabled():
                # context_fn returns (context of the forward pass, context of its recomputation
                # in backward); checkpoint calls it at once, so it returns this layer's contexts
                contexts = (_FrozenRunningStats(), _FrozenRunningStats(self.layers[i]))
                h, h_n, pre = checkpoint(self._layer, i, h, states[i], shortcut,
                                         use_reentrant=False, context_fn=lambda: contexts)
            else:
                h, h_n, pre = self._layer(i, h, states[i], shortcut)
            if self.residual and i % 2 == 0:
                x_block = pre                           # the input x_b of the next block
            new_states.append(h_n)
        return h, new_states

    def constrain_(self):
        """Clips every layer's u (call after each optimizer step)."""
        for layer in self.layers:
            layer.constrain_()


class Net(nn.Module):
    """The recurrent network of `model` plus a linear read-out, for every task of this script.

    Args:
        model: one of MODELS: "indrnn", "res-indrnn" (DeepIndRNN, plain or residual), "lstm"
            (nn.LSTM), "irnn" (nn.RNN with ReLU, W_hh = I, Le et al. 2015) or "rnn" (nn.RNN
            with tanh, PyTorch's initialisation).
        n_in, n_out: input features (or vocabulary) and outputs (classes, vocabulary, 1).
        hidden_size, layers: H and the number of recurrent layers.
        per_step: a read-out at every step (language modelling) or at the last step only; the
            last IndRNN layer gets the long-memory initialisation when only the last step counts.
        indrnn_kwargs: passed to DeepIndRNN (dropout, batch_norm, seq_len, mag, ...).
    Inputs: x (T, B) long tokens (one-hot encoded to n_in) or (T, B, n_in) floats; state from
        the previous call (carried across batches in language modelling) or None.
    Outputs: logits (T, B, n_out) if per_step else (B, n_out) from the last step; new state.
    Raises: ValueError for an unknown model (and whatever DeepIndRNN raises).
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
        elif model == "rnn":
            self.rnn = nn.RNN(n_in, hidden_size, layers, nonlinearity="tanh")
        else:
            raise ValueError(f"unknown model {model!r}")
        self.head = nn.Linear(hidden_size, n_out)
        if model in ("indrnn", "res-indrnn") and indrnn_kwargs.get("input_std") is None:
            # the authors' PyTorch code (MNIST, PTB): kaiming_normal_, zero bias; on adding
            # (input_std set, the paper's N(0, 0.001) inputs) PyTorch's default, as before
            nn.init.kaiming_normal_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x, state=None):
        if x.dtype == torch.long:
            x = F.one_hot(x, self.n_in).float()  # (T, B) -> (T, B, n_in)
        if self.model == "irnn" and torch.is_autocast_enabled(x.device.type):
            # W_hh = I: float32 under autocast, as the IndRNN recurrence (bfloat16's spacing
            # near 1 is 2^-7: its copy of W_hh would not see small updates)
            with torch.autocast(x.device.type, enabled=False):
                h, state = self.rnn(x.float(), state)  # (T, B, H)
        else:
            h, state = self.rnn(x, state)        # (T, B, H)
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
# Gradient flow (CVPR section 3.1): how far back BPTT's gradient reaches. Needs torch alone.

def grad_flow(model, x, loss_fn):
    """||dL/dh_t|| for every step t = 1..T of one batch: the gradient that BPTT carries from the
    loss L back to the state h_t of the top recurrent layer, through every later step.

    For IndRNN it is a product of u_n * relu'(.) factors per unit n (CVPR section 3.1, eq. 4),
    so |u| <= MAG^(1/T) keeps it in range; for the tanh RNN a product of W_hh^T diag(tanh')
    matrices, which shrinks or grows like the power method (Pascanu, Mikolov and Bengio 2013).
    The network is stepped one step at a time, a zero tensor p_t is added to the top layer's
    state h_t (the read-out and the next step see h_t + p_t), and dL/dp_t = dL/dh_t. In eval mode
    (batch norm with its running statistics, no dropout); the weights are unchanged.
    Args: model: a Net; x (T, B) tokens or (T, B, D); loss_fn(out) -> scalar, the loss of the
        network's output (logits or predictions, as Net.forward returns them).
    Returns: (T,) tensor of the norms over batch and units (Frobenius), in x's float dtype.
    """
    training, _ = model.training, model.eval()
    if x.dtype == torch.long:
        x = F.one_hot(x, model.n_in).to(torch.get_default_dtype())
    state, probes, states = None, [], []
    for x_t in x.unbind(0):  # (B, D)
        out, state = model.rnn(x_t[None], state)
        p = torch.zeros_like(out[0], requires_grad=True)
        h = out[0] + p
        probes.append(p)
        states.append(h)
        if isinstance(state, list):        # DeepIndRNN: h_n per layer
            state = state[:-1] + [h]
        elif isinstance(state, tuple):     # nn.LSTM: (h_n, c_n), each (layers, B, H)
            state = (torch.cat([state[0][:-1], h[None]]), state[1])
        else:                              # nn.RNN: h_n (layers, B, H)
            state = torch.cat([state[:-1], h[None]])
    h = torch.stack(states) if model.per_step else states[-1]
    if model.out_norm is not None:
        h = model.out_norm(h)
    grads = torch.autograd.grad(loss_fn(model.head(h)), probes)
    model.train(training)
    return torch.stack([g.norm() for g in grads])


def linear_recurrence_gradient(radius, steps, size=16, seed=0, dtype=torch.float64):
    """The gradient of the linear recurrence h_t = W h_(t-1) through `steps` steps, against the
    spectral radius of W: ||dL/dh_(T-d)|| / ||dL/dh_T|| for d = 0..steps, by BPTT (autograd).

    W = radius * Q with Q a random orthogonal (size, size) matrix, so every eigenvalue of W has
    modulus `radius` and W^T scales every vector by exactly radius: the ratio is radius^d. BPTT
    multiplies the gradient by W^T once per step, as the power method multiplies a vector by a
    matrix: below 1 it vanishes, above 1 it explodes (Goodfellow, Bengio and Courville, Deep
    Learning, section 10.7; Pascanu, Mikolov and Bengio 2013, section 2).
    Returns: (steps + 1,) tensor, the ratio at d = 0..steps (1 at d = 0).
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=dtype))
    w = radius * q
    h = torch.randn(size, generator=g, dtype=dtype, requires_grad=True)
    states = [h]
    for _ in range(steps):
        states.append(w @ states[-1])
    for s in states:
        s.retain_grad()
    states[-1].sum().backward()
    norms = torch.stack([s.grad.norm() for s in reversed(states)])
    return norms / norms[0]


def single_unit_loss(w, b, steps=50, h0=0.5, target=0.7):
    """The single-unit recurrent network of Pascanu, Mikolov and Bengio (2013): h_t = w *
    sigmoid(h_(t-1)) + b from h_0 = h0, trained so that h_steps = target; loss (h_steps -
    target)^2. w, b: tensors of any (equal) shape, e.g. a grid: the loss surface, whose cliffs
    (where h_steps jumps between the map's fixed points) make the gradient explode.
    Returns: the loss, of w's shape."""
    h = torch.full_like(w, h0)
    for _ in range(steps):
        h = w * torch.sigmoid(h) + b
    return (h - target) ** 2


def single_unit_descent(w, b, lr, steps, clip=None):
    """Gradient descent on single_unit_loss from (w, b), with gradient-norm clipping at `clip`
    (None: none; Pascanu, Mikolov and Bengio 2013, section 3.2: rescale the gradient g to
    clip * g / ||g|| when ||g|| > clip). Returns a list of (w, b, loss, ||g||) per step,
    starting point first."""
    p = torch.tensor([float(w), float(b)], dtype=torch.float64, requires_grad=True)
    path = []
    for _ in range(steps + 1):
        loss = single_unit_loss(p[0], p[1])
        g, = torch.autograd.grad(loss, p)
        path.append((p[0].item(), p[1].item(), loss.item(), g.norm().item()))
        if clip is not None and g.norm() > clip:
            g = g * (clip / g.norm())
        with torch.no_grad():
            p -= lr * g
    return path[:steps + 1]


# ----------------------------------------------------------------------------------------------
# Data: NTU RGB+D skeletons (CVPR section 4.4), the one task only this script uses; every other
# task comes from tasks.make_task. The data needs registration with its owners, so nothing here
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
        FloatTensor (n_frames, bodies * joints * 3): x, y, z in metres of every joint of every
        body.
    Raises:
        tasks.DataError: if the file does not follow the format (the message names the file and
        line).
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
        raise tasks.DataError(f"{path}: not an NTU RGB+D .skeleton file near line {pos} ({e})") \
            from e
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
    `<data_dir>/ntu/skeletons.pt`: frames (F, 150) float16 in metres, centred on the mean
    base-of-spine joint of the first body; offsets (N+1,) into frames; label (N,) 0..59;
    subject, camera (N,); names, the N file names.
    Raises: tasks.DataError saying what to obtain and where to put it when the files are missing.
    """
    folder = os.path.join(data_dir, "ntu")
    cache = os.path.join(folder, "skeletons.pt")
    if os.path.exists(cache):
        return torch.load(cache)
    src = os.path.join(folder, "nturgb+d_skeletons")
    names = sorted(n for n in os.listdir(src) if n.endswith(".skeleton")) \
        if os.path.isdir(src) else []
    if not names:
        raise tasks.DataError(
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
    tasks.save_checkpoint(cache, data)
    return data


class NTUTask(tasks.EpochShuffle):
    """NTU RGB+D 60 action recognition from 3D skeletons, `frames` frames per sequence (CVPR
    section 4.4), with the interface of the tasks in tasks.py.

    Each sequence is cut into `frames` equal segments; training takes a random frame from each
    (fresh every epoch), evaluation the middle frame. Batches: x (frames, B, 150) float, x, y, z
    in metres of 25 joints of two bodies (the second zero if absent); y (B,) labels 0..59.
    Protocol "cs" (cross-subject) or "cv" (cross-view); 5% of the training set (seed
    tasks.SPLIT_SEED) is held out for validation.
    Raises: ValueError for another protocol; tasks.DataError if the data is missing (load_ntu).
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
        train, valid = tasks.holdout(len(train_idx))
        n_val = len(valid)
        self.index = {"train": train_idx[train], "valid": train_idx[valid], "test": test_idx}
        self.label = d["label"]
        self._epoch_indices(len(self.index["train"]), 0)  # refuses too large a batch now
        self.description = (
            f"ntu ({'cross-subject' if protocol == 'cs' else 'cross-view'}): {frames} frames per "
            f"sequence (random frame per segment in training, middle frame in evaluation), 150 "
            f"features (2 bodies x 25 joints x xyz); train {len(self.index['train'])} / valid "
            f"{n_val} (5%, seed {tasks.SPLIT_SEED}) / test {len(test_idx)}; metric accuracy")

    def _batch(self, idx, generator=None):
        start, n = self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]  # (B,), (B,)
        seg = torch.arange(self.seq_len + 1)[:, None] * n[None] / self.seq_len   # (S+1, B)
        pos = torch.rand(self.seq_len, len(idx), generator=generator) if generator else 0.5
        t = (seg[:-1] + pos * (seg[1:] - seg[:-1])).long().clamp(max=(n - 1).clamp(min=0))
        x = self.frames_all[(start + t).clamp(max=len(self.frames_all) - 1)].float()  # (S, B, 150)
        x[:, n == 0] = 0.0                                                        # empty files
        return x, self.label[idx]

    def train_batch(self, step):
        """(x (frames, B, 150), y (B,)) of training step `step`, a pure function of (seed, step)."""
        idx = self.index["train"]
        batch = idx[self._epoch_indices(len(idx), step)]
        return self._batch(batch, tasks.step_generator(self.seed + 1, step))

    def eval_batches(self, split, limit=None):
        """Yields the fixed (x, y) batches of split "valid" or "test", its first `limit` samples
        only if given."""
        idx = self.index[split]
        idx = idx if limit is None else idx[:limit]
        for start in range(0, len(idx), self.batch_size):
            yield self._batch(idx[start:start + self.batch_size])


def make_task(name, seq_len=None, batch_size=64, data_dir="./data", seed=0, test_seq_len=None,
              eval_size=1000, ntu_protocol="cs"):
    """The task `name` of TASKS: "ntu" (NTUTask, `seq_len` frames, default 20, protocol
    `ntu_protocol` "cs" or "cv") is built here, the others by tasks.make_task.
    Raises: ValueError / tasks.DataError with a clear message (see tasks.make_task, NTUTask)."""
    if name == "ntu":
        return NTUTask(ntu_protocol, batch_size, data_dir, seed, frames=seq_len or 20)
    return tasks.make_task(name, seq_len, batch_size, data_dir, seed, test_seq_len,
                           eval_size=eval_size)


# ----------------------------------------------------------------------------------------------
# Configuration: the papers' settings (CVPR 2018 section 4, Deep IndRNN section 5); paper-silent
# values are marked.

MODELS = ["indrnn", "res-indrnn", "lstm", "irnn", "rnn"]
TASKS = ["adding", "mnist", "pmnist", "ptb", "ntu"]
DEFAULTS = dict(hidden_size=128, lr=2e-4, clip=0.0, clip_value=10.0, mag=2.0, dropout=0.0,
                bn="time", weight_decay=1e-4, eval_every=1000, eval_size=1000, lr_drop_every=0,
                input_std=None, stop_at=None)
TASK_DEFAULTS = {
    # CVPR 4.1: 2 layers x 128, Adam 2e-4, lr / 10 every 20k steps, batch 50, no batch norm,
    # input weights N(0, 0.001). Ours: until validation MSE 0.01 (Fig. 2: converged), at most
    # 60,000 steps (the authors' code), an evaluation every 500.
    "adding": dict(seq_len=1000, layers=2, batch_size=50, steps=60_000, eval_every=500,
                   lr_drop_every=20_000, bn="none", weight_decay=0.0, input_std=1e-3,
                   stop_at=0.01),
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
    ("rnn", "adding"): dict(layers=1),
    ("res-indrnn", "mnist"): dict(layers=11),
    ("res-indrnn", "pmnist"): dict(layers=11),
    ("res-indrnn", "ptb"): dict(layers=11, seq_len=150, dropout=0.3),
}
QUICK = {  # CPU scale, minutes (adding: docs/indrnn.md says what the preset shows)
    "adding": dict(seq_len=500, steps=4000, eval_every=250, eval_size=500, lr_drop_every=0,
                   stop_at=None),
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

# The paper's tables, each row once (see tools/tables.py): run_all.sh runs them, the table
# builder fills them. --quick trains adding at T/10.
TABLES = {
    "indrnn-adding": ("IndRNN Fig. 2: adding problem, test MSE (0.167 = predicting 1)", [
        dict(label=f"{m}, T={T}", task="adding", model=m, tag=f"T{T}", args=f"--seq-len {T}",
             quick=f"--seq-len {T // 10} --steps 2000", paper=PAPER[("adding", m)],
             metric="test_mse",  # on CPU: IndRNN until validation MSE 0.01 (at most 180 min),
             cpu="--time-budget 180 " + ("--stop-at 0.01" if m == "indrnn"  # each baseline
                                         else "--steps-like indrnn"))       # as many steps
        for m in ("indrnn", "lstm", "irnn") for T in (100, 500, 1000, 5000)]),
    "indrnn-mnist": ("IndRNN Table 2: sequential / permuted MNIST, test accuracy (%)", [
        dict(label=f"{m}, {t}", task=t, model=m, tag="T784", quick="--steps 150", ckpt=True,
             paper=PAPER[(t, m)])
        for t in ("mnist", "pmnist") for m in ("indrnn", "res-indrnn")]),
    "indrnn-ptb": ("IndRNN Table 4: char-level PTB, test BPC", [
        dict(label="IndRNN 6 layers, T=50", task="ptb", model="indrnn", tag="T50",
             quick="--steps 300", paper=PAPER[("ptb", "indrnn")], metric="test_bpc"),
        dict(label="res-IndRNN 11 layers, T=150", task="ptb", model="res-indrnn", tag="T150",
             quick="--seq-len 150 --layers 3 --steps 300", paper=PAPER[("ptb", "res-indrnn")],
             metric="test_bpc")]),
    "indrnn-ntu": ("IndRNN Table 5: NTU RGB+D, test accuracy (%)", [
        dict(label=f"IndRNN 6 layers, {p}", task="ntu", model="indrnn", tag=f"T20-{p}",
             args=f"--ntu-protocol {p}", quick=f"--ntu-protocol {p}",
             paper=PAPER[(f"ntu-{p}", "indrnn")])
        for p in ("cs", "cv")]),
}


def preset(seen):
    """The defaults of a run: DEFAULTS < TASK_DEFAULTS < MODEL_DEFAULTS < QUICK (with --quick),
    for the --task, --model, --quick, --seq-len and --ntu-protocol that `seen` found."""
    cfg = {**DEFAULTS, **TASK_DEFAULTS[seen.task],
           **MODEL_DEFAULTS.get((seen.model, seen.task), {}),
           **(QUICK[seen.task] if seen.quick else {})}
    if seen.task == "ntu" and seen.ntu_protocol == "cv":
        cfg["dropout"] = 0.1
    if (seen.model, seen.task) == ("irnn", "adding") and (seen.seq_len or cfg["seq_len"]) >= 1000:
        cfg["lr"] = 1e-5  # CVPR 4.1: IRNN needs a smaller lr on long sequences
    if seen.model == "res-indrnn" and cfg["layers"] % 2 == 0:
        cfg["layers"] += 1  # presets count plain layers; a residual net has 1 + 2 * blocks
    return cfg


def parse_args(argv=None):
    """The command line in one pass, with the chosen task's, model's and --quick's defaults
    (`--task mnist --help` shows MNIST's); a one-line usage error for anything inconsistent."""
    p = tasks.common_parser(" ".join(__doc__.split("\n\n")[0].split()), TASKS, MODELS)
    a = p.add_argument
    a("--mag", type=tasks.positive_float, help="MAG of the recurrent constraint |u| <= MAG^(1/T)")
    a("--dropout", type=tasks.fraction, help="time-shared dropout after each layer")
    a("--bn", choices=["time", "frame", "none"],
      help="batch norm between layers: over time and batch, frame-wise, or none")
    a("--weight-decay", type=tasks.nonneg_float, help="L2 on weights (never on u, biases, BN)")
    a("--clip-value", type=tasks.nonneg_float, help="clip each gradient value to +-this (0: off)")
    a("--lr-drop-every", type=tasks.nonneg_int,
      help="divide the lr by 10 every N steps (0: never; ptb: / 5 on plateau)")
    a("--input-std", type=tasks.positive_float,
      help="initialise input weights N(0, std) (without it: the authors' kaiming_uniform_)")
    a("--ntu-protocol", choices=["cs", "cv"], default="cs",
      help="NTU RGB+D: cross-subject or cross-view")
    a("--steps-like", choices=MODELS, help="train as many steps as the finished run of this "
      "--model with the same task, --tag and --out-dir (Fig. 2: a baseline gets IndRNN's steps)")
    seen = tasks.first_look(p, argv, "--ntu-protocol")
    p.set_defaults(**preset(seen))
    args = tasks.parse(p, argv)
    if args.task in ("mnist", "pmnist") and args.seq_len != 784:
        p.error(f"--seq-len is fixed by the images for {args.task}: 784")
    if args.model == "res-indrnn" and (args.layers < 3 or args.layers % 2 == 0):
        p.error(f"--layers {args.layers}: res-indrnn has 1 + 2 * blocks layers (3, 5, ..., 11)")
    if args.grad_checkpoint and args.model not in ("indrnn", "res-indrnn"):
        p.error("--grad-checkpoint applies to indrnn and res-indrnn (nn.LSTM / nn.RNN are fused)")
    if args.test_seq_len and args.task != "adding":
        p.error(f"--test-seq-len: only adding can be tested at another T, not {args.task}")
    if args.test_seq_len and args.bn == "frame" and args.test_seq_len != args.seq_len:
        p.error("--test-seq-len: frame-wise batch norm (--bn frame) has statistics for the "
                "training T only")
    args.tag = tasks.run_tag(p, args, f"T{args.seq_len}" + (
        f"-{args.ntu_protocol}" if args.task == "ntu" else ""))
    if args.steps_like:  # the steps the other model's finished run took (its results file)
        path = os.path.join(args.out_dir, f"indrnn-{args.task}-{args.steps_like}-{args.tag}.json")
        try:
            with open(path) as f:
                record = json.load(f)
            args.steps = record["steps_done"]
        except (OSError, ValueError, KeyError) as e:
            p.error(f"--steps-like {args.steps_like}: no finished run in {path} "
                    f"({type(e).__name__}); run --model {args.steps_like} with --tag {args.tag} "
                    f"first")
        if record.get("diverged"):
            p.error(f"--steps-like {args.steps_like}: that run diverged ({record['diverged']}), "
                    f"so its step count is no target; give --steps")
    return args


def build_model(args, task):
    """Net for the parsed options and a task (its n_in, n_out and kind)."""
    kw = {}
    if args.model in ("indrnn", "res-indrnn"):
        kw = dict(dropout=args.dropout, batch_norm=None if args.bn == "none" else args.bn,
                  seq_len=args.seq_len, mag=args.mag,
                  input_std=args.input_std, grad_checkpoint=args.grad_checkpoint)
    return Net(args.model, task.n_in, task.n_out, args.hidden_size, args.layers,
               per_step=task.kind == "lm", **kw)


def make_optimizer(model, args):
    """Adam; weight decay on every parameter except the recurrent weights u and the biases
    (Deep IndRNN section 5), chosen by name as the authors' code does: batch-norm scales are
    decayed, their shifts (biases) are not."""
    def decayed(name):  # "rnn.layers.0.u", "head.bias", nn.LSTM's "rnn.bias_ih_l0", ...
        last = name.rsplit(".", 1)[-1]
        return not (last == "u" or last.startswith("bias"))
    decay = [p for n, p in model.named_parameters() if decayed(n)]
    no_decay = [p for n, p in model.named_parameters() if not decayed(n)]
    return torch.optim.Adam([dict(params=decay, weight_decay=args.weight_decay),
                             dict(params=no_decay, weight_decay=0.0)], lr=args.lr)


def training_loss(model, kind, x, y, state=None, amp_dtype=None):
    """(loss, new state) of a training step: the forward pass of the Net `model` from `state`
    under autocast if amp_dtype is set, then the task's loss (kind: see tasks.loss_and_stats; a
    scalar tensor: MSE, or mean cross-entropy in nats)."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out, state = model(x, state)
    return tasks.loss_and_stats(kind, out, y, stats=False)[0], state


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


def run_benchmark(args, device, amp_dtype, argv=None):
    """Forward+backward time of one IndRNN layer (input projection + recurrence) against nn.LSTM
    of the same size in the same run, and the plain autograd loop for reference. Two input
    sizes: D = H (a layer inside a deep network) and D = 2 (the adding problem, where the Deep
    IndRNN paper measured its speed-ups). Prints which recurrence the IndRNN rows run
    (recurrence_impl: the Triton kernel on CUDA, with a row for the loop Function beside it, or
    the loop), then a Markdown table: milliseconds per batch, speed-up over nn.LSTM, and MiB
    (peak CUDA memory, or tensors saved for backward on CPU)."""
    given = tasks.flags_given(argv)
    B = args.batch_size if "--batch-size" in given else 100  # the paper's: B=100, H=128
    H = args.hidden_size
    lengths = [args.seq_len] if "--seq-len" in given else [784, 1000, 5000]
    print(f"benchmark on {tasks.hardware(device)}, torch {torch.__version__}: one layer, B={B}, "
          f"H={H}, forward + backward of sum(output), amp={amp_dtype}")
    impl = recurrence_impl(device)  # what the IndRNN rows run: the Triton kernel or the loop
    print(f"IndRNN recurrence: {impl}" + (" (one fused Triton kernel forward, one backward)"
          if impl == "triton" else " (IndRNNRecurrence, a loop of element-wise ops per step)"))
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
            def step_loop(x):  # the loop Function, for comparison when IndRNN runs Triton
                pre = layer.input(x)
                return indrnn_recurrence(pre, layer.u, x.new_zeros(B, H), impl="loop"), None
            runs = [("nn.LSTM", lstm), ("IndRNN", layer), ("IndRNN, autograd loop", plain_loop)]
            if impl == "triton":
                runs.insert(2, ("IndRNN, loop Function", step_loop))
            if args.compile:  # the time loop unrolled into one graph (tasks.compiled)
                runs.insert(2, ("IndRNN, compiled", tasks.compiled(layer, args, device)))
            if T <= 1000:  # the naive loop's backward is quadratic in T
                runs.append(("IndRNN, naive loop indexing pre[t]", naive_loop))
            lstm_sec = None
            for name, model in runs:
                def fn():
                    with torch.autocast(device.type, dtype=amp_dtype,
                                        enabled=amp_dtype is not None):
                        out = model(x)[0]
                    out.float().sum().backward()
                start = time.perf_counter()
                if name.endswith("compiled"):
                    fn()  # compiles
                    name += f" (compiling took {time.perf_counter() - start:.0f} s)"
                sec, mem = tasks.benchmark(fn, device)
                lstm_sec = lstm_sec or sec
                speedup = lstm_sec / sec
                print(f"| {D} | {T} | {name} | {sec * 1e3:.1f} | "
                      f"{speedup:.{1 if speedup >= 0.1 else 3}f}x | {mem:.1f} |", flush=True)


def probe(args, task, device, amp_dtype):
    """One training step of this run on `device`, as a function (tasks.setup's --device auto)."""
    net, (x, y) = build_model(args, task).to(device), (v.to(device) for v in task.train_batch(0))
    return lambda: training_loss(net, task.kind, x, y, None, amp_dtype)[0].backward()


GRAD_FLOW_MODELS = ["indrnn", "irnn", "lstm", "rnn"]  # --grad-flow without --model
# the single unit's loss surface (w range, b range), and a descent that meets its cliff
CLIFF_GRID, CLIFF_START, CLIFF_LR, CLIFF_STEPS, CLIFF_CLIP = ((0, 12), (-8, 2)), (7.0, -3.5), 0.01, 100, 1.0


def run_grad_flow(args, argv=None):
    """--grad-flow: grad_flow of GRAD_FLOW_MODELS (or the --model given; with --eval-only, of
    that run's best checkpoint) on one training batch (the loss of its last step), printed and
    written to
    <out-dir>/indrnn-<task>-gradflow-<tag>[-<model>-best].csv; at initialisation also the
    classic demonstrations, in indrnn-gradflow-spectral.csv and indrnn-gradflow-cliff*.csv."""
    device = tasks.setup(args)[0]
    task = make_task(args.task, args.seq_len, args.batch_size, args.data_dir, args.seed)
    x, y = (v.to(device) for v in task.train_batch(0))
    given = args.eval_only or "--model" in tasks.flags_given(argv or sys.argv[1:])
    curves = {}
    for m in [args.model] if given else GRAD_FLOW_MODELS:
        margs = parse_args([*(sys.argv[1:] if argv is None else argv), "--model", m])
        torch.manual_seed(args.seed)
        model = build_model(margs, task)
        if args.eval_only:
            model.load_state_dict(tasks.best_weights("indrnn.py", margs))
        start = time.time()
        curves[m] = grad_flow(model.to(device), x, lambda out: tasks.loss_and_stats(
            task.kind, out[-1:] if task.kind == "lm" else out, y[-1:] if task.kind == "lm" else y,
            False)[0])
        print(f"== {m}: {time.time() - start:.1f} s")
    suffix = f"-{args.model}-best" if args.eval_only else ""
    tasks.grad_flow_report(curves, os.path.join(
        args.out_dir, f"indrnn-{args.task}-gradflow-{args.tag}{suffix}.csv"))
    if args.eval_only:
        return
    rows = ["radius,distance,ratio,closed_form"]
    print("linear recurrence h_t = W h_(t-1): ||dL/dh_(T-d)|| / ||dL/dh_T|| (= radius^d)")
    for radius in (0.9, 1.0, 1.1):
        ratio = linear_recurrence_gradient(radius, 1000).tolist()
        rows += [f"{radius},{d},{r!r},{radius ** d!r}" for d, r in enumerate(ratio)]
        print(f"  radius {radius}: " + ", ".join(f"d={d}: {ratio[d]:.3g}" for d in (10, 100, 1000)))
    tasks.write_lines(os.path.join(args.out_dir, "indrnn-gradflow-spectral.csv"), rows)
    w, b = torch.meshgrid(torch.linspace(*CLIFF_GRID[0], 241, dtype=torch.float64),
                          torch.linspace(*CLIFF_GRID[1], 241, dtype=torch.float64), indexing="ij")
    loss = single_unit_loss(w, b)
    tasks.write_lines(os.path.join(args.out_dir, "indrnn-gradflow-cliff-surface.csv"),
               ["w,b,loss"] + [f"{a!r},{c!r},{l!r}" for a, c, l in
                               zip(w.flatten().tolist(), b.flatten().tolist(), loss.flatten().tolist())])
    rows = ["clip,step,w,b,loss,grad_norm"]
    print(f"single unit, 50 steps to 0.7: descent from (w, b) = {CLIFF_START}, lr {CLIFF_LR}")
    for clip in (None, CLIFF_CLIP):
        path = single_unit_descent(*CLIFF_START, CLIFF_LR, CLIFF_STEPS, clip)
        rows += [f"{clip or 0},{i},{a!r},{c!r},{l!r},{g!r}" for i, (a, c, l, g) in enumerate(path)]
        jump = max(math.dist(p[:2], q[:2]) for p, q in zip(path, path[1:]))
        print(f"  clip {clip or 'off'}: largest step {jump:.3g}, largest ||g|| "
              f"{max(p[3] for p in path):.3g}, loss {path[0][2]:.3g} -> {path[-1][2]:.3g}")
    tasks.write_lines(os.path.join(args.out_dir, "indrnn-gradflow-cliff-descent.csv"), rows)


def main(argv=None):
    """Trains one model on one task, tests its best validation checkpoint and writes
    <out-dir>/indrnn-<task>-<model>-<tag>[-test<T>].json (the record, returned) and .csv (a row
    per step). With --benchmark, runs run_benchmark and returns None."""
    args = parse_args(argv)
    if args.benchmark:
        return run_benchmark(args, *tasks.setup(args)[:2], argv)
    if args.grad_flow:
        return run_grad_flow(args, argv)
    run = tasks.Run("indrnn.py", args, argv)  # refusals, lock and Ctrl-C before any data
    task = make_task(args.task, args.seq_len, args.batch_size, args.data_dir, args.seed,
                     args.test_seq_len, eval_size=args.eval_size, ntu_protocol=args.ntu_protocol)
    device, amp_dtype, use_scaler = tasks.setup(args, lambda dev, amp: probe(args, task, dev, amp))
    with torch.device("meta"):
        tasks.check_fits(build_model(args, task), task, args, device)
    model = build_model(args, task).to(device)
    opt = make_optimizer(model, args)
    if task.kind == "lm":  # PTB: lr / 5 when validation BPC stops improving (patience 20 evals)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.2, patience=20)
    else:                  # lr / 10 every lr_drop_every steps
        sched = torch.optim.lr_scheduler.StepLR(opt, args.lr_drop_every or 10**12, gamma=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    constrain = getattr(model.rnn, "constrain_", lambda: None)  # IndRNN models only
    # the hidden state carried from batch to batch (PTB's windows are contiguous): in run.extra,
    # so that a resumed run continues with it
    run.start(model, task, device, extra=dict(state=None), opt=opt, sched=sched, scaler=scaler)
    forward_loss = tasks.compiled(  # with --compile one graph (two for PTB: with a state or
        lambda x, y, state: training_loss(model, task.kind, x, y, state, amp_dtype),  # without)
        args, device)

    while run.training():
        x, y = (v.to(device) for v in task.train_batch(run.step))
        state = run.extra["state"]
        if task.kind == "lm" and random.Random(args.seed * 1_000_003 + run.step).random() < 0.1:
            state = None  # the authors reset the carried state with probability 1/10 per batch
        loss, state = forward_loss(x, y, state if task.kind == "lm" else None)
        run.extra["state"] = detach_state(state) if task.kind == "lm" else None
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = nn.utils.get_total_norm(p.grad for p in model.parameters() if p.grad is not None)
        if args.clip_value:
            nn.utils.clip_grad_value_(model.parameters(), args.clip_value)
        if args.clip:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        lr = opt.param_groups[0]["lr"]
        scaler.step(opt)
        scaler.update()
        constrain()  # |u| <= MAG^(1/T) after every update (section 3.1)
        if task.kind != "lm":
            sched.step()
        run.step_done(loss, grad_norm=norm, lr=lr)
        if run.eval_due():
            val = evaluate(model, task, "valid", device, amp_dtype, limit=args.eval_size)
            if task.kind == "lm":
                sched.step(val[run.metric])
            run.log(val)

    # Test at the best validation checkpoint.
    model.load_state_dict(run.best_weights())
    key = args.task + (f"-{args.ntu_protocol}" if args.task == "ntu" else "")
    return run.finish(evaluate(model, task, "test", device, amp_dtype, args.test_size),
                      evaluate(model, task, "valid", device, amp_dtype, args.eval_size),
                      paper=PAPER.get((key, args.model), "UNCONFIRMED"))


if __name__ == "__main__":
    tasks.run_main(main)
