"""r-LSTM / p-LSTM: LSTMs with auxiliary losses (Trinh, Dai, Luong, Le, ICML 2018, arXiv 1803.00144).

    python rlstm.py --task mnist --quick                        # CPU, 500 steps: test 37.2 ± 4.4%
                                                                # (10 runs; chance 11.35%),
                                                                # 11-17 min on 2 busy cores
    python rlstm.py --task mnist --model rlstm                  # paper: r-LSTM Truncate300
    python rlstm.py --task mnist --model lstm --bptt 0          # paper: LSTM Full BP
    python rlstm.py --task pmnist --model plstm --bptt 0 --aux-bptt 0   # p-LSTM Full BP
    python rlstm.py --benchmark                                 # time and memory at T = 1k/4k/16k
    python rlstm.py --task mnist --grad-flow                    # where each loss's gradient reaches

The model is one module, `RLSTM`: forward(x, y) returns (supervised loss, auxiliary loss). It needs
torch alone and can be copied into other code with the helpers its docstring lists.
Models (`--model`):
    rlstm  main LSTM + decoder that reconstructs the --aux-len elements before a random anchor
           (scheduled sampling), section 3
    plstm  main LSTM + decoder that predicts the --aux-len elements after the anchor (LM loss)
    lstm   the same main network without auxiliary loss
Truncation (section 3, Table 2): the supervised loss is backpropagated through the last --bptt
steps of the main LSTM and the auxiliary loss through the --aux-bptt steps before each anchor
(300 and 300: the "Truncate300" rows; --bptt 0 --aux-bptt 0: the "Full BP" rows).
"""
import csv
import math
import os
import struct
import sys
import tarfile
import time
import warnings
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import tasks  # shared data, metrics, checkpoints and results; the model below does not need it

# ----------------------------------------------------------------------------------------------
# Model: needs torch alone. Notation (ours; section 3 and Figure 2 of the paper say it in words):
#   x_0 .. x_{T-1}   the input sequence, time-major tensors (T, B, C): C tokens per step
#   s_t = (h_t, c_t) the main LSTM's state after reading x_0 .. x_{t-1} (s_0 = 0), each (B, H)
#   L_sup = CE(head(h_T), y), gradient through the last `bptt` inputs only
#   a                an anchor, drawn uniformly for every sequence and batch (`draw_anchors`)
#   w_0 .. w_{L-1}   the auxiliary window: r-LSTM x_{a-L} .. x_{a-1}, p-LSTM x_{a-1} .. x_{a+L-2}
#   L_aux = mean over anchors, samples, k = 1..L-1 and channels of -log p(w_k | s_a, w'_0..w'_{k-1})
#           where w' are the fed inputs (w, or the decoder's own samples: scheduled sampling),
#           gradient through the `aux_bptt` inputs before each anchor only
#   training: L_aux alone for the pretraining epochs, then L_sup + L_aux


class TokenEmbedding(nn.Module):
    """Embeds C channels of tokens per step and sums them (CIFAR-10: R, G and B pixel values).

    Inputs: x, LongTensor (T, B, C) of values in [0, vocab). Output: (T, B, dim).
    Raises: ValueError if x is not (T, B, C).
    """

    def __init__(self, vocab, channels, dim):
        super().__init__()
        self.vocab, self.channels = vocab, channels
        self.table = nn.Embedding(vocab * channels, dim)  # one table per channel, side by side
        self.register_buffer("offset", torch.arange(channels) * vocab, persistent=False)

    def forward(self, x):
        if x.dim() != 3 or x.shape[2] != self.channels:
            raise ValueError(f"TokenEmbedding expects tokens of shape (T, B, {self.channels}), "
                             f"got {tuple(x.shape)}")
        return self.table(x + self.offset).sum(2)  # (T, B, C, dim) -> (T, B, dim)


def _lstm_run(lstm, x, h, c, checkpoint_every=0):
    """Runs a 1-layer nn.LSTM over x (S, B, D) from (h, c) (each (B, H)); returns (h, c) at the end.
    With checkpoint_every > 0 and gradients on, segments of that many steps are recomputed in
    backward (torch.utils.checkpoint), so only their boundary states are stored."""
    if not (checkpoint_every and torch.is_grad_enabled()) or checkpoint_every >= len(x):
        return _lstm_final(lstm, x, h, c)
    # split, not x[s:s+seg]: the backward of a slice writes a full-size gradient (O(T^2) in all)
    for part in x.split(checkpoint_every):
        h, c = checkpoint(_lstm_final, lstm, part, h, c, use_reentrant=False)
    return h, c


def _lstm_step(lstm, x, h, c):
    """One step of a 1-layer nn.LSTM, as its cell: x (B, D), h and c (B, H) -> (h, c). The same
    arithmetic as lstm(x[None], (h[None], c[None])) with less overhead per call, for the loops
    that read one input at a time."""
    return torch.lstm_cell(x, (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                           lstm.bias_hh_l0)


def _lstm_final(lstm, x, h, c):
    """nn.LSTM over x (S, B, D) from (h, c), each (B, H) (cast to x's dtype for autocast);
    returns the final (h, c), each (B, H)."""
    _, (h, c) = lstm(x, (h[None].to(x.dtype), c[None].to(x.dtype)))
    return h[0], c[0]


class MainNet(nn.Module):
    """The main network of r-LSTM / p-LSTM (Trinh et al. 2018, section 4): embedding -> 1-layer LSTM
    -> the last hidden state -> 2-layer feed-forward (ReLU) -> class logits; with truncated
    backpropagation and the LSTM states at anchors for the auxiliary loss.

    Truncation is exact and per loss: the state where a gradient window starts is computed without
    gradient (detached), then the window is recomputed with gradient. The supervised loss sees the
    last `bptt` steps; the state at anchor a (after reading x[0..a-1]) sees x[a-aux_bptt .. a-1].
    Memory for the gradient windows is O(bptt + anchors * aux_bptt), independent of T. The
    computation's shape does not depend on where the anchors fall (see `states`).

    Args:
        vocab: values per input channel (256 for pixels), or 0 for float inputs of size `embed`.
        channels: tokens per step C (1; 3 for CIFAR-10 RGB).
        n_classes: classes of the supervised task.
        embed, hidden, ffn: embedding size (128), LSTM units H (128), feed-forward width (256).
        checkpoint_every: if > 0, recompute gradient windows in segments of this many steps.
    Inputs of forward: x, bptt, anchors, aux_bptt, supervised, anchor_range
        x: LongTensor (T, B, C) tokens, or FloatTensor (T, B, embed) already-embedded inputs.
        bptt: steps of the supervised gradient window (0: all T).
        anchors: optional LongTensor (N, B) of anchor positions in [1, T], N anchors per sample.
        aux_bptt: steps of the auxiliary gradient window before each anchor (0: back to t = 0).
        supervised: False skips the classifier (auxiliary pretraining).
        anchor_range: (low, high), the interval the anchors are drawn from (`anchor_range`);
            default [1, T]. The LSTM steps one input at a time only there (see `states`).
    Outputs: logits, anchor_state
        logits: (B, n_classes), or None if not supervised.
        anchor_state: (h, c), each (N, B, H), the LSTM state after reading x[0..a-1] at every
            anchor a; None if anchors is None.
    Raises: ValueError for inputs of the wrong shape or type (see `TokenEmbedding`), or if
        neither supervised nor anchors leaves anything to compute.
    """

    block = 1024  # steps per nn.LSTM call at most: transient memory independent of T

    def __init__(self, vocab, channels, n_classes, embed=128, hidden=128, ffn=256,
                 checkpoint_every=0):
        super().__init__()
        self.embed_size, self.hidden_size, self.checkpoint_every = embed, hidden, checkpoint_every
        self.embed = TokenEmbedding(vocab, channels, embed) if vocab else None
        self.lstm = nn.LSTM(embed, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, ffn), nn.ReLU(), nn.Linear(ffn, ffn), nn.ReLU(),
                                  nn.Linear(ffn, n_classes))

    def _embed(self, x):
        """(S, B, C) tokens or (S, B, embed) floats -> (S, B, embed)."""
        if x.dtype == torch.long:
            if self.embed is None:
                raise ValueError("this MainNet has vocab=0: it takes float inputs (T, B, embed)")
            return self.embed(x)
        if x.dim() != 3 or x.shape[2] != self.embed_size:
            raise ValueError(f"MainNet expects float inputs of shape (T, B, {self.embed_size}), "
                             f"got {tuple(x.shape)}")
        return x

    def states(self, x, ends, K, ranges):
        """The LSTM states s_e at the ends e (N, B) of gradient windows: differentiable through
        the K inputs x[e-K .. e-1] before each end only, the truncated backpropagation of section
        3 (Figure 2: the auxiliary loss's gradients are truncated "to keep the overall cost of
        BPTT constant"); a window with e <= K starts at t = 0 from s_0 = 0 (full BPTT).

        Every end lies in one of the intervals `ranges`, [(lo, hi), ...], fixed by the task (the
        supervised loss ends at T; the anchors' range is fixed by T and aux_len), so that the
        computation has the same shape at every call, whatever the anchors: no host
        synchronisation, and the step can be compiled or captured. Where no end can lie, the
        LSTM runs as one fused call; inside the intervals it steps and picks each window's state
        with torch.where (see `_pick`).
        1. The truncation points s_{e-K} without gradient (nothing to do where every e <= K).
        2. The windows x[e-K .. e-1], gathered into one batch of N*B columns and run from the
           detached states s_{e-K}; where every e <= K, x itself from s_0 (shared by the ends of
           a column).
        Args: x (T, B, C) tokens or (T, B, embed) floats; ends LongTensor (N, B) in [1, T]; K >= 1.
        Returns: (h, c), each (N, B, H), in the parameters' dtype.
        """
        T, B = x.shape[:2]
        N, H = ends.shape[0], self.hidden_size
        K = min(K, max(hi for _, hi in ranges))  # no window is longer than its prefix
        zeros = x.new_zeros(B, H, dtype=self.lstm.weight_hh_l0.dtype)          # s_0, (B, H)
        if all(hi <= K for _, hi in ranges):  # full BPTT for every end
            return self._pick(self._embed(x), zeros, zeros, ends, ranges)
        starts = (ends - K).clamp(min=0)                                        # (N, B)
        first = [(max(lo - K, 0), max(hi - K, 0)) for lo, hi in ranges]
        with torch.no_grad():                      # 1. the truncation points, s_start (N, B, H)
            h0, c0 = self._pick(self._embed(x[:max(hi for _, hi in first)]), zeros, zeros,
                                starts, first)
        # 2. window (n, b) reads x[starts + k, b], k = 0 .. L-1, from the detached s_start and
        # ends after ends - starts steps; positions past T read x[T-1] (never used)
        L = max(min(hi, K) for _, hi in ranges)
        idx = (starts[..., None] + torch.arange(L, device=x.device)).clamp(max=T - 1)  # (N, B, L)
        cols = torch.arange(B, device=x.device).view(1, B, 1).expand(N, B, L)
        xs = x[idx.permute(2, 0, 1), cols.permute(2, 0, 1)]                    # (L, N, B, ...)
        xs = self._embed(xs.reshape(L, N * B, *x.shape[2:]))                    # (L, N*B, embed)
        h, c = self._pick(xs, h0.reshape(N * B, H), c0.reshape(N * B, H),
                          (ends - starts).reshape(N * B), [(min(lo, K), min(hi, K))
                                                           for lo, hi in ranges])
        return h.view(N, B, H), c.view(N, B, H)

    def _pick(self, xs, h, c, at, ranges):
        """Runs the LSTM over xs (S, M, embed) from (h, c) (M, H each) and returns, for every
        entry of `at` (..., M) long, the state after reading xs[0 .. at-1] of its column, as
        (h, c) of shape at.shape + (H,). Every value of `at` lies in one of the intervals
        `ranges`: up to them one fused call (blocks of `block` steps), inside them one cell step
        at a time, keeping every state; the states asked for are picked at the end."""
        dtype = self.lstm.weight_hh_l0.dtype  # float32 under autocast too (the LSTM runs in half)
        points = sorted({p for lo, hi in ranges for p in range(lo, hi + 1)})
        plan, t = [], 0  # the inputs before each point: fused blocks, or one step (a 1)
        for p in points:
            plan += [self.block] * ((p - t) // self.block) + [(p - t) % self.block] * (
                (p - t) % self.block > 0) + [0]  # 0: keep the state here
            t = p
        pieces = iter(xs[:t].split([n for n in plan if n]))  # split, not slices: see _lstm_run
        hs, cs = [], []
        for n in plan:
            if n == 1:
                h, c = _lstm_step(self.lstm, next(pieces)[0], h, c)
            elif n:
                h, c = _lstm_run(self.lstm, next(pieces), h, c, self.checkpoint_every)
            else:
                hs.append(h.to(dtype))
                cs.append(c.to(dtype))
        # where the state of position p is among the kept ones: p - a + the points before a, for
        # the run of consecutive points [a, b] that holds p
        index, kept = torch.zeros_like(at), 0
        for a, b in _runs(points):
            index = torch.where((at >= a) & (at <= b), at - a + kept, index)
            kept += b - a + 1
        cols = torch.arange(at.shape[-1], device=at.device).expand_as(at)
        return torch.stack(hs)[index, cols], torch.stack(cs)[index, cols]

    def forward(self, x, bptt=0, anchors=None, aux_bptt=0, supervised=True, anchor_range=None):
        T, B = x.shape[:2]
        if not torch.is_grad_enabled() and anchors is None:  # evaluation: one plain pass
            zeros = torch.zeros(B, self.hidden_size, device=x.device)
            h, _ = _lstm_final(self.lstm, self._embed(x), zeros, zeros)      # h_T, (B, H)
            return self.head(h), None
        if not supervised and anchors is None:
            raise ValueError("MainNet: supervised=False without anchors leaves nothing to compute")
        K_sup = T if bptt == 0 else min(bptt, T)
        K_aux = T if aux_bptt == 0 else aux_bptt
        # Every gradient window ends at a position e: T for L_sup, the anchors for L_aux; with
        # one window length for both, one call computes them all.
        groups = [(torch.full((1, B), T, device=x.device), K_sup, [(T, T)])] if supervised else []
        if anchors is not None:
            groups.append((anchors, K_aux, [anchor_range or (1, T)]))
        if len(groups) == 2 and K_sup == K_aux:
            (e1, K, r1), (e2, _, r2) = groups
            groups = [(torch.cat([e1, e2]), K, r1 + r2)]
        states = [self.states(x, ends, K, ranges) for ends, K, ranges in groups]
        h, c = (torch.cat(s) for s in zip(*states))                            # (1+N or N, B, H)
        logits = self.head(h[0]) if supervised else None                        # (B, n_classes)
        anchor_state = None if anchors is None else (h[int(supervised):], c[int(supervised):])
        return logits, anchor_state


def _runs(points):
    """The maximal runs [a, b] of consecutive integers in the sorted list `points`."""
    runs = []
    for p in points:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return runs


def draw_anchors(kind, T, aux_len, n, batch_size, generator=None, device=None):
    """Anchor positions, drawn uniformly and independently for every sample of every batch
    (section 3; Figure 2: "for each random anchor point ... we build an auxiliary loss at its
    position").

    An anchor a is the position after reading x[0..a-1] (state s_a). r-LSTM (kind "r")
    reconstructs x[a-L .. a-1], so a is in [L, T]; p-LSTM (kind "p") predicts x[a .. a+L-2] from
    x[a-1] on, so a is in [1, T-L+1]. L = aux_len.
    Returns: LongTensor (n, batch_size). Uses torch's global generator unless one is given.
    Raises: ValueError for another kind, or if 2 <= aux_len <= T does not hold.
    """
    low, high = anchor_range(kind, T, aux_len)
    return torch.randint(low, high + 1, (n, batch_size), generator=generator, device=device)


def anchor_range(kind, T, aux_len):
    """(low, high): the anchors of `kind` ("r" or "p") lie in [low, high] (see draw_anchors).
    Raises: ValueError for another kind, or if 2 <= aux_len <= T does not hold."""
    if kind not in ("r", "p"):
        raise ValueError(f"kind must be 'r' (r-LSTM) or 'p' (p-LSTM), got {kind!r}")
    low, high = (aux_len, T) if kind == "r" else (1, T - aux_len + 1)
    if low > high or aux_len < 2:
        raise ValueError(f"aux_len {aux_len} does not fit a sequence of {T} steps (need 2 <= "
                         f"aux_len <= T)")
    return low, high


def aux_windows(kind, x, anchors, aux_len):
    """The subsequence w_0 .. w_{L-1} each anchor's decoder works on (section 3, Figure 2).

    r-LSTM (kind "r"): x[a-L .. a-1], the L elements before the anchor; p-LSTM (kind "p"):
    x[a-1 .. a+L-2], the last element read and the L-1 after it. The decoder is fed w_0 and
    predicts w_1 .. w_{L-1}.
    x: (T, B, C) tokens; anchors: LongTensor (N, B) in anchor_range(kind, T, aux_len) (not
    checked here: a check would synchronise with the GPU; RLSTM checks anchors it is given).
    Returns: (L, N*B, C), column n*B + b is anchor (n, b).
    """
    N, B = anchors.shape
    first = anchors - aux_len if kind == "r" else anchors - 1                      # (N, B): w_0
    idx = first.unsqueeze(0) + torch.arange(aux_len, device=x.device).view(-1, 1, 1)  # (L, N, B)
    cols = torch.arange(B, device=x.device).view(1, 1, B).expand_as(idx)             # (L, N, B)
    return x[idx, cols].reshape(aux_len, N * B, x.shape[2])         # (L, N, B, C) -> (L, N*B, C)


class AuxDecoder(nn.Module):
    """The auxiliary network (Trinh et al. 2018, sections 3-4): embedding -> 2-layer LSTM (256)
    -> 2-layer feed-forward (256) -> logits over the input values of every channel.

    Its bottom layer starts from the main LSTM's state at the anchor, its top layer from zero.
    The main state (H_main = 128 units) is zero-padded to the decoder's 256 units: the paper gives
    no mapping between the two sizes (our choice, UNCONFIRMED).

    It is fed element 0 of a window of L elements and predicts elements 1..L-1. Scheduled
    sampling (Bengio et al. 2015; r-LSTM, section 3): each input 1..L-2 is, with probability
    `sample_prob`, replaced by a value sampled from the decoder's own prediction at the previous
    step. The sampled values carry no gradient, so training runs in two passes: `sample_inputs`
    generates the mixed inputs step by step without gradient, then `forward` runs the decoder on
    them vectorised (the same logits as the step loop; tested).

    Args:
        vocab: values per channel V (256 pixels, or the character vocabulary); channels: C.
        main_hidden: units of the main LSTM (<= hidden).
        embed, hidden, ffn: input embedding (128), LSTM units (256), feed-forward width (256).
    Inputs of forward: state, inputs
        state: (h, c), each (B, main_hidden): the main LSTM's state at the anchor.
        inputs: LongTensor (L-1, B, C): the fed elements (window[:-1] for teacher forcing).
    Output: logits (L-1, B, C, V), predictions of window[1:].
    Raises: ValueError if main_hidden > hidden.
    """

    def __init__(self, vocab, channels, main_hidden, embed=128, hidden=256, ffn=256):
        super().__init__()
        if main_hidden > hidden:
            raise ValueError(f"main_hidden {main_hidden} > decoder hidden {hidden}")
        self.vocab, self.channels, self.hidden_size, self.pad = vocab, channels, hidden, \
            hidden - main_hidden
        self.embed = TokenEmbedding(vocab, channels, embed)
        self.lstm1 = nn.LSTM(embed, hidden)
        self.lstm2 = nn.LSTM(hidden, hidden)
        self.out = nn.Sequential(nn.Linear(hidden, ffn), nn.ReLU(), nn.Linear(ffn, channels * vocab))

    def _init(self, state):
        """(h, c) each (B, main_hidden) -> the two layers' initial states, each (1, B, hidden)."""
        h, c = (F.pad(s, (0, self.pad)) for s in state)  # bottom layer: the main state s_a
        z = torch.zeros_like(h)                           # top layer: zero
        return (h[None], c[None]), (z[None], z[None])

    def _run(self, inputs, s1, s2):
        """inputs (S, B, C) from the layer states s1, s2 -> logits (S, B, C, V), s1, s2."""
        e = self.embed(inputs)                                               # (S, B, embed)
        o1, s1 = self.lstm1(e, tuple(s.to(e.dtype) for s in s1))             # (S, B, hidden)
        o2, s2 = self.lstm2(o1, tuple(s.to(o1.dtype) for s in s2))           # (S, B, hidden)
        return self._logits(o2), s1, s2                                      # (S, B, C, V)

    def _logits(self, h):
        """The read-out: top-layer states (..., hidden) -> logits (..., C, V)."""
        return self.out(h).unflatten(-1, (self.channels, self.vocab))

    def forward(self, state, inputs):
        return self._run(inputs, *self._init(state))[0]

    @torch.no_grad()
    def sample_inputs(self, state, window, sample_prob, generator=None):
        """Scheduled-sampling inputs, step by step without gradient.

        state: (h, c) each (B, main_hidden); window: LongTensor (L, B, C).
        Returns: inputs (L-1, B, C) to pass to forward, and the step loop's logits (L-1, B, C, V).
        Uses torch's global generator unless one is given.
        """
        (h1, c1), (h2, c2) = ((h[0], c[0]) for h, c in self._init(state))  # (B, hidden) each
        B = window.shape[1]
        inp, inputs, logits = window[0], [window[0]], []
        for k in range(1, len(window)):
            h1, c1 = _lstm_step(self.lstm1, self.embed(inp[None])[0], h1, c1)
            h2, c2 = _lstm_step(self.lstm2, h1, h2, c2)
            logit = self._logits(h2)                                            # (B, C, V)
            logits.append(logit)
            if k == len(window) - 1:
                break
            u = torch.rand(B, 1, generator=generator, device=window.device)
            g = torch.empty(logit.shape, device=window.device).exponential_(generator=generator)
            own = (logit.float() - g.log()).argmax(-1)  # Gumbel-max: a sample of the softmax
            inp = torch.where(u < sample_prob, own, window[k])
            inputs.append(inp)
        return torch.stack(inputs), torch.stack(logits)


def _upcast(logits):
    """Half-precision logits (autocast) as float32 for the cross-entropy; others unchanged."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


class RLSTM(nn.Module):
    """r-LSTM / p-LSTM (Trinh et al. 2018): an LSTM classifier trained with an unsupervised
    auxiliary loss at random anchors, both losses with truncated backpropagation. forward returns
    the two losses; the training loop adds them (L_sup + L_aux, or L_aux alone to pretrain).

    Section 3 and Figure 2: for every sequence, `n_anchors` anchors a are drawn at random (anew
    at every call). kind "r" (r-LSTM): a decoder started from the main LSTM's state at a
    reconstructs the aux_len elements before a, with scheduled sampling; kind "p" (p-LSTM): it
    predicts the aux_len - 1 elements after a (a language-model loss); kind None: the main network
    alone, an LSTM classifier. The supervised loss is backpropagated through the last `bptt`
    steps, the auxiliary loss through the `aux_bptt` steps before each anchor (Table 2:
    "Truncate300" is bptt = aux_bptt = 300, "Full BP" is 0 and 0). Memory for the gradient
    windows is O(bptt + n_anchors * (aux_bptt + aux_len)), independent of T. Default sizes are
    the paper's (section 4). Submodules: `main` (MainNet) and `decoder` (AuxDecoder, None for
    kind None).

    Copy with it: `MainNet`, `AuxDecoder`, `TokenEmbedding`, `draw_anchors`, `anchor_range`,
    `aux_windows`, `_runs`, `_lstm_step`, `_lstm_run`, `_lstm_final`, `_upcast` (imports:
    torch, torch.nn as nn, torch.nn.functional as F, and checkpoint from torch.utils.checkpoint).

    Args:
        vocab: values per input channel V (256 for pixels); 0 for float inputs (T, B, embed),
            for kind None only (the decoder predicts tokens).
        n_out: classes of the supervised task.
        channels: tokens per step C (1; 3 for RGB pixels).
        kind: "r" (r-LSTM), "p" (p-LSTM) or None (no auxiliary loss).
        aux_len: L, elements of every auxiliary window (600 in the paper; >= 2, <= T).
        n_anchors: anchors per sequence (the paper's experiments: 1).
        bptt: steps of the supervised gradient window (300; 0: full BPTT).
        aux_bptt: steps of the auxiliary gradient window before each anchor (300; 0: to t = 0).
        embed, hidden, ffn: embedding size (128), main LSTM units H (128) and feed-forward width
            (256); the decoder uses the same embedding size and feed-forward width.
        aux_hidden: units of the decoder's two LSTM layers (256; >= hidden).
        checkpoint_every: if > 0, recompute the gradient windows in segments of this many steps
            in backward (torch.utils.checkpoint): less memory, the same gradients.
    Raises: ValueError for an unknown kind, aux_len < 2, n_anchors < 1, a negative bptt or
        aux_bptt, aux_hidden < hidden, or vocab 0 with an auxiliary loss.

    Inputs of forward: x, y, sample_prob=0.0, supervised=True, anchors=None
        x: LongTensor (T, B) or (T, B, C) tokens in [0, vocab); FloatTensor (T, B, embed) if
            vocab is 0.
        y: LongTensor (B,) class labels; unused (may be None) if not supervised.
        sample_prob: probability of feeding the decoder its own sample instead of the true
            element (scheduled sampling; 0: teacher forcing).
        supervised: False computes L_aux alone (the pretraining phase; the classifier is unused).
        anchors: LongTensor (N, B) of anchor positions, for tests; default: `draw_anchors` with
            torch's global generator.
    Outputs: sup, aux, scalar mean cross-entropies in nats: sup over the B samples (None if not
        supervised), aux over anchors, samples, the L-1 predicted steps and the C channels (None
        for kind None).
    Raises (forward): ValueError if aux_len does not fit T, for anchors out of range, or if kind
        None is called with supervised=False.
    """

    def __init__(self, vocab, n_out, *, channels=1, kind="r", aux_len=600, n_anchors=1, bptt=300,
                 aux_bptt=300, embed=128, hidden=128, ffn=256, aux_hidden=256, checkpoint_every=0):
        super().__init__()
        if kind not in ("r", "p", None):
            raise ValueError(f"kind must be 'r' (r-LSTM), 'p' (p-LSTM) or None, got {kind!r}")
        if kind and (aux_len < 2 or n_anchors < 1 or not vocab):
            raise ValueError(f"an auxiliary loss needs aux_len >= 2, n_anchors >= 1 and token "
                             f"inputs (vocab > 0); got {aux_len}, {n_anchors}, {vocab}")
        if bptt < 0 or aux_bptt < 0:
            raise ValueError(f"bptt and aux_bptt must be >= 0 (0: full BPTT), got {bptt}, "
                             f"{aux_bptt}")
        self.kind, self.aux_len, self.n_anchors = kind, aux_len, n_anchors
        self.bptt, self.aux_bptt = bptt, aux_bptt
        self.main = MainNet(vocab, channels, n_out, embed, hidden, ffn, checkpoint_every)
        self.decoder = AuxDecoder(vocab, channels, hidden, embed, aux_hidden, ffn) if kind else None

    @staticmethod
    def _steps(x):
        return x.unsqueeze(2) if x.dim() == 2 else x  # (T, B) tokens -> (T, B, 1)

    def logits(self, x):
        """Class logits (B, n_out) from the whole sequence x (T, B[, C]) (gradient: full BPTT)."""
        return self.main(self._steps(x))[0]

    def forward(self, x, y=None, sample_prob=0.0, supervised=True, anchors=None):
        x = self._steps(x)                                                      # (T, B, C)
        T, B = x.shape[:2]
        if self.decoder is None and not supervised:
            raise ValueError("RLSTM with kind None has no auxiliary loss: supervised=False leaves "
                             "nothing to compute")
        span = None
        if self.decoder is None:
            anchors = None
        else:
            span = anchor_range(self.kind, T, self.aux_len)
            if anchors is None:
                anchors = draw_anchors(self.kind, T, self.aux_len, self.n_anchors, B,
                                       device=x.device)
            elif int(anchors.min()) < span[0] or int(anchors.max()) > span[1]:
                raise ValueError(f"anchors out of range for kind {self.kind!r}, aux_len "
                                 f"{self.aux_len} and T = {T}: need {span[0]} .. {span[1]}")
        logits, state = self.main(x, self.bptt, anchors, self.aux_bptt, supervised, span)
        sup = F.cross_entropy(_upcast(logits), y) if supervised else None       # L_sup
        aux = None if anchors is None else self.aux_loss(x, anchors, state, sample_prob)
        return sup, aux

    def aux_loss(self, x, anchors, state, sample_prob=0.0):
        """L_aux: the decoder, started from the anchor states, predicts w_1 .. w_{L-1}.
        x: (T, B, C) tokens; anchors: (N, B); state: (h, c) each (N, B, H). Returns a scalar."""
        win = aux_windows(self.kind, x, anchors, self.aux_len)                  # (L, N*B, C)
        st = tuple(s.reshape(-1, s.shape[-1]) for s in state)                   # (N*B, H) each
        inputs = win[:-1]                                                       # teacher forcing
        if torch.is_tensor(sample_prob) or sample_prob > 0:  # (a tensor: one graph at every p)
            inputs, _ = self.decoder.sample_inputs(st, win, sample_prob)        # (L-1, N*B, C)
        out = self.decoder(st, inputs)                                          # (L-1, N*B, C, V)
        return F.cross_entropy(_upcast(out).reshape(-1, out.shape[-1]), win[1:].reshape(-1))


def grad_flow(model, x, y, anchors=None):
    """||dL_sup/dh_t|| and ||dL_aux/dh_t|| for the main LSTM's states h_t, t = 1..T, of one
    batch: where each loss's gradient reaches (section 3, Figure 2). The supervised loss's stops
    `bptt` steps before the end, the auxiliary loss's `aux_bptt` steps before each anchor: an
    auxiliary loss brings gradient to early steps that the supervised one no longer reaches.

    The main LSTM is stepped one input at a time with its own weights, a zero tensor p_t added
    to every h_t (dL/dp_t = dL/dh_t), and (h, c) detached where each loss's window starts,
    once for each loss: the losses are those of forward(x, y, anchors=anchors) with teacher
    forcing (tested).
    Args: model: an RLSTM; x (T, B[, C]) tokens; y (B,) labels; anchors (N, B) or None (drawn
        with torch's generator; unused for kind None).
    Returns: (sup, aux), (T,) tensors of norms over batch and units (Frobenius); aux is None for
        kind None. Also sets grad_flow.losses = (L_sup, L_aux), for the tests.
    """
    x = model._steps(x)
    T, B = x.shape[:2]
    if model.decoder is not None and anchors is None:
        anchors = draw_anchors(model.kind, T, model.aux_len, model.n_anchors, B, device=x.device)
    main, curves, losses = model.main, [], []
    for ends, K in [(torch.full((1, B), T, device=x.device), model.bptt), (anchors, model.aux_bptt)]:
        if ends is None:
            curves.append(None)
            losses.append(None)
            continue
        N = ends.shape[0]
        cols = ends.reshape(N * B)                                  # one chain per (anchor, sample)
        start = (cols - K).clamp(min=0) if K else torch.zeros_like(cols)
        e = main._embed(x).repeat(1, N, 1)                           # (T, N*B, embed)
        h = c = e.new_zeros(N * B, main.hidden_size)
        probes, hs, cs = [], [], []
        for t, e_t in enumerate(e.unbind(0)):                        # reading x_t gives s_(t+1)
            h, c = _lstm_step(main.lstm, e_t, h, c)
            probes.append(torch.zeros_like(h, requires_grad=True))
            h = h + probes[-1]
            cut = (start == t + 1)[:, None]                          # a window starts here
            h, c = torch.where(cut, h.detach(), h), torch.where(cut, c.detach(), c)
            hs.append(h)
            cs.append(c)
        pick = torch.arange(N * B, device=x.device)
        h_end, c_end = torch.stack(hs)[cols - 1, pick], torch.stack(cs)[cols - 1, pick]
        if len(losses) == 0:
            loss = F.cross_entropy(main.head(h_end), y)
        else:
            loss = model.aux_loss(x, anchors, (h_end.view(N, B, -1), c_end.view(N, B, -1)))
        grads = torch.autograd.grad(loss, probes, allow_unused=True)
        curves.append(torch.stack([g.norm() if g is not None else torch.zeros(()) for g in grads]))
        losses.append(loss.detach())
    grad_flow.losses = tuple(losses)
    return tuple(curves)


def rlstm_losses_reference(model, x, y, anchors, supervised=True):
    """The losses of `RLSTM` (teacher forcing), written as plain loops for the tests: every
    sample's supervised window and every (anchor, sample) pair's auxiliary window run one by one
    through the model's own layers, with the truncation spelled out as a no-grad prefix.

    model: an RLSTM; x: LongTensor (T, B, C); y: (B,); anchors: LongTensor (N, B).
    Returns (sup or None, aux or None) as RLSTM.forward(x, y, 0.0, supervised, anchors).
    """
    main, dec = model.main, model.decoder
    T, B, C = x.shape
    dtype = main.lstm.weight_hh_l0.dtype
    zero = torch.zeros(1, 1, main.hidden_size, dtype=dtype)

    def state_at(b, end, K):
        """s_end of sample b, with gradient through x[end-K .. end-1] only (K = 0: all)."""
        start = max(end - K, 0) if K else 0
        h, c = zero, zero
        with torch.no_grad():  # the truncated prefix: no gradient before `start`
            if start > 0:
                _, (h, c) = main.lstm(main.embed(x[:start, b:b + 1]), (h, c))
        if end > start:
            _, (h, c) = main.lstm(main.embed(x[start:end, b:b + 1]), (h.detach(), c.detach()))
        return h, c                                                             # (1, 1, H) each

    sup = None
    if supervised:
        logits = torch.cat([main.head(state_at(b, T, model.bptt)[0][0]) for b in range(B)])
        sup = F.cross_entropy(logits, y)
    if model.kind is None:
        return sup, None
    L, nll, count = model.aux_len, 0.0, 0
    for n in range(anchors.shape[0]):
        for b in range(B):
            a = int(anchors[n, b])
            first = a - L if model.kind == "r" else a - 1
            w = x[first:first + L, b:b + 1]                                     # (L, 1, C)
            h, c = state_at(b, a, model.aux_bptt)
            pad = torch.zeros(1, 1, dec.hidden_size - main.hidden_size, dtype=dtype)
            s1 = (torch.cat([h, pad], 2), torch.cat([c, pad], 2))  # bottom layer: s_a, padded
            s2 = (torch.zeros_like(s1[0]), torch.zeros_like(s1[0]))  # top layer: zero
            o1, _ = dec.lstm1(dec.embed(w[:-1]), s1)
            o2, _ = dec.lstm2(o1, s2)
            logp = dec.out(o2).view(L - 1, C, dec.vocab).log_softmax(-1)       # (L-1, C, V)
            nll = nll - logp.gather(-1, w[1:, 0, :, None]).sum()
            count += (L - 1) * C
    return sup, nll / count


# ----------------------------------------------------------------------------------------------
# Data only r-LSTM uses (section 4): StanfordDogs images as pixel sequences (up to 16384 steps)
# and DBpedia character-level classification, both downloaded into --data-dir when missing.
# The other tasks (mnist, pmnist, cifar10) come from tasks.make_task; `make_task` below
# dispatches. Helpers shared with the other scripts (download, checksums, the 5% validation
# hold-out, the ImageTask batching, DataError) stay in tasks.py.

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
    major), a cell array a list of such values. Raises tasks.DataError for other files (e.g. -v7.3).
    """
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 128 or raw[126:128] != b"IM" or raw[124:126] != b"\x00\x01":
        raise tasks.DataError(f"{path} is not a little-endian MATLAB v5 .mat file (MATLAB -v7.3 / "
                              f"HDF5 files are not supported)")
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
            raise tasks.DataError(f"{path}: unsupported MATLAB data type {kind}")
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
        raise tasks.DataError(f"{path}: unsupported MATLAB array class {cls} in {name!r}")

    out = {}
    for kind, data in elements(raw[128:]):
        item = value(kind, data)
        if isinstance(item, tuple):
            out[item[0]] = item[1]
    return out


def _fetch_and_extract(url, folder, archive, errors, md5=None):
    """folder/archive, downloaded from url if missing (tasks.download: an MD5 given is checked,
    also of a file already there), extracted into folder; what failed is appended to errors."""
    from torchvision.datasets.utils import extract_archive
    try:
        extract_archive(tasks.download(url, folder, archive, md5), folder)
    except (tasks.DataError, OSError, tarfile.TarError) as e:
        if "checksum" in str(e):  # a corrupt file here: say so, not that it is missing
            raise
        errors.append(f"{url}: {e}")


def load_stanford_dogs(data_dir, side):
    """StanfordDogs images as uint8 pixel sequences (N, side*side, 3), row-major RGB scan.

    Reads the official layout under `<data_dir>/stanford_dogs/` (Images/ and the three lists),
    downloading and extracting images.tar and lists.tar when missing. Every image is centre-
    cropped to a square and resized to side x side (antialiased bilinear; the paper's
    preprocessing is UNCONFIRMED); the result is cached as `cache_<side>.pt`.
    Returns {"train": (x, y), "test": (x, y)}, y LongTensor of classes 0..119.
    """
    import torchvision  # here, so that the other tasks need no torchvision
    folder = os.path.join(data_dir, "stanford_dogs")
    cache = os.path.join(folder, f"cache_{side}.pt")
    if os.path.exists(cache):  # checked like a fresh decode: a stale or foreign cache is an error
        try:
            out = torch.load(cache)
        except Exception as e:  # truncated, empty or not a torch file
            raise tasks.DataError(f"{cache} cannot be read ({type(e).__name__}): delete it (it "
                                  f"is rebuilt from the images)") from e
        return _check_dogs(out, side, f"{cache} (delete it: it is rebuilt from the images)")
    os.makedirs(folder, exist_ok=True)
    errors = []
    for archive, marker in (("lists.tar", "train_list.mat"), ("images.tar", "Images")):
        if not os.path.exists(os.path.join(folder, marker)):
            _fetch_and_extract(DOGS_URL + archive, folder, archive, errors)
    missing = [m for m in ("train_list.mat", "test_list.mat", "Images")
               if not os.path.exists(os.path.join(folder, m))]
    if missing:
        raise tasks.DataError(f"StanfordDogs is missing {', '.join(missing)} in {folder} and could "
                              f"not be downloaded ({'; '.join(errors) or 'no error'}). Put the "
                              f"official images.tar and lists.tar from {DOGS_URL} into {folder}.")
    out = {}
    for split in ("train", "test"):
        mat = read_mat5(os.path.join(folder, f"{split}_list.mat"))
        files, labels = mat.get("file_list"), mat.get("labels")
        if files is None or labels is None or len(files) != len(labels):
            raise tasks.DataError(f"{split}_list.mat in {folder} lacks matching file_list and "
                                  f"labels")
        if len(files) != DOGS_SPLIT_SIZES[split]:
            raise tasks.DataError(f"{split}_list.mat lists {len(files)} images, the official split "
                                  f"has {DOGS_SPLIT_SIZES[split]}: replace it with the file from "
                                  f"lists.tar")
        y = torch.tensor(labels, dtype=torch.long) - 1
        if y.min() < 0 or y.max() > 119:  # before minutes of decoding
            raise tasks.DataError(f"{split}_list.mat has labels outside 1..120")
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
        out[split] = (torch.stack(images), y)
    tasks.save_checkpoint(cache, out)  # atomic: never half a file; checked above, by construction
    return out


def _check_dogs(out, side, where):
    """`out` (a loaded cache) if it is {split: (uint8 (N, side*side, 3), labels (N,) in 0..119)}
    with the official split sizes; else a DataError that names `where`."""
    for split, n in DOGS_SPLIT_SIZES.items():
        pair = out.get(split) if isinstance(out, dict) else None
        x, y = pair if isinstance(pair, (tuple, list)) and len(pair) == 2 else (None, None)
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                and x.dtype == torch.uint8 and x.shape == (n, side * side, 3)
                and y.dtype == torch.long and y.shape == (n,)):
            raise tasks.DataError(f"StanfordDogs {split}: not {n} images of {side}x{side} RGB "
                                  f"with a label each in {where}")
        if y.min() < 0 or y.max() > 119:
            raise tasks.DataError(f"StanfordDogs {split}: labels outside 1..120 in {where}")
    return out


class StanfordDogsTask(tasks.ImageTask):
    """StanfordDogs (120 breeds) as RGB pixel sequences of T = side^2 steps x 3 channels.

    T must be a square (the paper's longest sequences are 16384 = 128 x 128). 5% of the official
    training list is held out for validation (seed tasks.SPLIT_SEED); the test split is the
    official one.
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
        self.data = tasks.image_splits(*data["train"], data["test"])
        self._epoch_indices(len(self.data["train"][0]), 0)  # refuses too large a batch now
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
    `<data_dir>/dbpedia/` when missing; raises tasks.DataError if that fails or the files look
    wrong."""
    folder = os.path.join(data_dir, "dbpedia")
    csv_dir = os.path.join(folder, "dbpedia_csv")
    errors = []
    for url in DBPEDIA_URLS:  # the mirror only if Google Drive refuses; either must pass the MD5
        if not os.path.exists(os.path.join(csv_dir, "test.csv")):
            _fetch_and_extract(url, folder, "dbpedia_csv.tar.gz", errors, DBPEDIA_MD5)
    paths = {s: os.path.join(csv_dir, f"{s}.csv") for s in ("train", "test")}
    if not all(os.path.exists(p) for p in paths.values()):
        raise tasks.DataError(f"DBpedia is missing from {csv_dir} and could not be downloaded "
                              f"({'; '.join(errors)}). Put dbpedia_csv.tar.gz (MD5 {DBPEDIA_MD5}) "
                              f"into {folder}, or its extracted dbpedia_csv/ folder with train.csv "
                              f"and test.csv.")
    out = {}
    for split, path in paths.items():
        texts, labels = [], []
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if len(row) != 3 or not row[0].isdigit() or not 1 <= int(row[0]) <= 14:
                    raise tasks.DataError(f"{path}, row {i + 1}: expected "
                                          f"`class,\"title\",\"content\"` with class 1..14, got "
                                          f"{row[:3]!r}")
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


class DBpediaTask(tasks.ImageTask):
    """DBpedia (14 classes) as character sequences of T steps: tokens (T, B) in 0..vocab-1.

    5% of the training CSV is held out for validation (seed tasks.SPLIT_SEED); the test split is the
    official test.csv. Always tokens (characters have no scale), whatever `as_tokens` says.
    """

    def __init__(self, seq_len, batch_size, data_dir, seed, as_tokens=True):
        self.name, self.batch_size, self.seed, self.as_tokens = "dbpedia", batch_size, seed, True
        self.kind = "classify"
        raw = load_dbpedia(data_dir)
        (texts, y_train), (test_texts, y_test) = raw["train"], raw["test"]
        x_train, x_test = encode_chars(texts, seq_len), encode_chars(test_texts, seq_len)
        self.data = tasks.image_splits(x_train, y_train, (x_test, y_test))
        self._epoch_indices(len(self.data["train"][0]), 0)  # refuses too large a batch now
        n_val = len(self.data["valid"][0])
        self.n_in, self.seq_len, self.n_out = 1, seq_len, 14
        self.vocab = len(DBPEDIA_ALPHABET) + 2
        self.description = (
            f"dbpedia (char level): title + content, lower-cased, first {seq_len} characters "
            f"right-aligned, vocab {self.vocab} (0 pad, 1 other); train "
            f"{len(self.data['train'][0])} / valid {n_val} / test {len(x_test)}; metric accuracy")



def make_task(name, seq_len=None, batch_size=64, data_dir="./data", seed=0, test_seq_len=None,
              as_tokens=True, eval_size=1000):
    """A task by name: "stanford_dogs" and "dbpedia" are built here, the others by
    tasks.make_task (same arguments). Raises ValueError / tasks.DataError with a clear message."""
    if name == "stanford_dogs":  # seq_len: side^2 pixels (default 4096 = 64 x 64)
        return StanfordDogsTask(seq_len or 4096, batch_size, data_dir, seed, as_tokens)
    if name == "dbpedia":        # seq_len: characters per document (default 1024)
        return DBpediaTask(seq_len or 1024, batch_size, data_dir, seed)
    return tasks.make_task(name, seq_len, batch_size, data_dir, seed, test_seq_len,
                           as_tokens=as_tokens, eval_size=eval_size)


# ----------------------------------------------------------------------------------------------
# Configuration. The paper gives the architecture, the anchor and subsequence length (600), the
# truncation (300) and the StanfordDogs epochs; optimizer, lr, batch, clipping and the scheduled
# sampling schedule are UNCONFIRMED (RMSprop 1e-3, batch 128 are the one public attempt's).

MODELS = ["rlstm", "plstm", "lstm"]
TASKS = ["mnist", "pmnist", "cifar10", "stanford_dogs", "dbpedia"]
UNCONFIRMED = ("optimizer", "lr", "batch_size", "clip", "ss_max", "ss_steps", "pretrain_epochs",
               "steps")
DEFAULTS = dict(batch_size=128, hidden_size=128, embed_size=128, ffn_size=256, aux_hidden=256,
                optimizer="rmsprop", lr=1e-3, clip=1.0, aux_len=600, anchors=1, bptt=300,
                aux_bptt=300, pretrain_epochs=1.0, ss_max=0.5, steps=100_000, eval_every=1000,
                eval_size=2000)
TASK_DEFAULTS = {
    "mnist": dict(seq_len=784),
    "pmnist": dict(seq_len=784),
    "cifar10": dict(seq_len=1024),
    # 20 pretraining + 100 joint epochs (paper); 11,400 training images after the 5% validation
    # hold-out, so 89 steps of 128 per epoch
    "stanford_dogs": dict(seq_len=4096, pretrain_epochs=20.0, steps=120 * 89, eval_every=200,
                          eval_size=600),
    "dbpedia": dict(seq_len=1024, steps=50_000, eval_every=2000, eval_size=2000),
}
MODEL_DEFAULTS = {"lstm": dict(pretrain_epochs=0.0, ss_max=0.0),  # no auxiliary loss
                  "plstm": dict(ss_max=0.0)}  # a language-model loss: teacher forcing
# CPU scale, minutes: a smaller batch and decoder, 500 steps, lr 2e-3 (docs/rlstm.md: why),
# scheduled sampling ramped over the run; the 30-minute cap only stops a far slower machine.
QUICK = {
    t: dict(batch_size=32, aux_len=200, aux_hidden=128, pretrain_epochs=0.03, steps=500, lr=2e-3,
            eval_every=125, eval_size=500, time_budget=30.0, ss_max=0.25)
    for t in TASKS}
# Trinh et al. 2018, Table 2, test accuracy %: its rows (label, model, full BP?) and the values
# per dataset in that order.
TABLE2_ROWS = [("LSTM Full BP", "lstm", True), ("LSTM Truncate300", "lstm", False),
               ("r-LSTM Truncate300", "rlstm", False), ("p-LSTM Truncate300", "plstm", False),
               ("r-LSTM Full BP", "rlstm", True), ("p-LSTM Full BP", "plstm", True)]
TABLE2 = {"mnist": (98.3, 11.3, 96.4, 95.4, 98.4, 98.0),
          "pmnist": (89.4, 88.8, 92.8, 92.5, 95.2, 92.8),
          "cifar10": (58.8, 49.0, 65.9, 64.7, 72.2, 67.6)}
# keyed by (task, model, full BP?)
PAPER = {(task, model, full): f"{value} ({'Full BP' if full else 'Truncate300'})"
         for task, values in TABLE2.items()
         for (_, model, full), value in zip(TABLE2_ROWS, values)}


def _bptt(full, T=None):  # a row's flags: full BP, or truncation at 300 steps (the paper's)
    return ((f"--seq-len {T} " if T else "") + ("--bptt 0 --aux-bptt 0" if full else
                                                "--bptt 300 --aux-bptt 300")).strip()


# The paper's tables, each row once (see tools/tables.py): run_all.sh runs them, the table
# builder fills them. --quick: 100 steps of the quick preset per run.
TABLES = {
    "rlstm-table2": ("r-LSTM Table 2: test accuracy (%)", [
        dict(label=f"{label}, {t}", task=t, model=m, tag=f"T{1024 if t == 'cifar10' else 784}-"
             + ("full" if full else "trunc300"), args=_bptt(full),
             quick=_bptt(full) + " --steps 100", ckpt=full, paper=PAPER[(t, m, full)])
        for t in TABLE2 for label, m, full in TABLE2_ROWS]),
    "rlstm-dogs": ("r-LSTM: StanfordDogs by sequence length, test accuracy (%)", [
        dict(label=f"{label}, T={T}", task="stanford_dogs", model=m, tag=f"T{T}-" + (
            "full" if full else "trunc300"), args=_bptt(full, T),
            quick=_bptt(full, T) + " --steps 100", ckpt=full)
        for T in (1024, 4096, 16384) for label, m, full in TABLE2_ROWS[:3]]),
    "rlstm-dbpedia": ("r-LSTM: DBpedia, test accuracy (%)", [
        dict(label=label, task="dbpedia", model=m, tag="T1024-" + ("full" if full else "trunc300"),
             args=_bptt(full), quick=_bptt(full) + " --steps 100", ckpt=full)
        for label, m, full in TABLE2_ROWS[:3]]),
}


def paper_number(args):
    """Table 2's number for this run's row, or UNCONFIRMED where the paper has no such row."""
    same = args.model == "lstm" or args.aux_bptt == args.bptt
    if same and args.bptt in (0, 300):
        return PAPER.get((args.task, args.model, args.bptt == 0), "UNCONFIRMED")
    return "UNCONFIRMED"


def preset(seen):
    """The defaults of a run: DEFAULTS < TASK_DEFAULTS < QUICK (with --quick) < MODEL_DEFAULTS,
    for the --task, --model and --quick that `seen` (tasks.first_look) found."""
    return {**DEFAULTS, **TASK_DEFAULTS[seen.task], **(QUICK[seen.task] if seen.quick else {}),
            **MODEL_DEFAULTS.get(seen.model, {})}


def parse_args(argv=None):
    """The command line in one pass, with the chosen task's, model's and --quick's defaults
    (`--task dbpedia --help` shows DBpedia's); a one-line usage error for anything inconsistent."""
    p = tasks.common_parser(__doc__.split("\n")[0], TASKS, MODELS)
    a = p.add_argument
    a("--bptt", type=tasks.nonneg_int,
      help="backpropagate the supervised loss through the last N steps (0: full BP)")
    a("--aux-bptt", type=tasks.nonneg_int,
      help="backpropagate the auxiliary loss through the N steps before each anchor (0: full)")
    a("--aux-len", type=tasks.positive_int, help="length L of the auxiliary subsequence")
    a("--anchors", type=tasks.positive_int, help="anchors per sequence, redrawn every batch")
    a("--pretrain-epochs", type=tasks.nonneg_float,
      help="epochs of auxiliary-loss-only training before L_sup + L_aux (may be fractional)")
    a("--ss-max", type=tasks.probability,
      help="r-LSTM scheduled sampling: final probability of feeding the decoder's own sample")
    a("--ss-steps", type=tasks.positive_int, help="steps over which the sampling probability "
      "grows linearly from 0 to --ss-max (without it: --steps)")
    a("--optimizer", choices=["rmsprop", "adam"], help="the optimizer of both losses")
    a("--embed-size", type=tasks.positive_int, help="size of the input token embedding")
    a("--ffn-size", type=tasks.positive_int, help="units of the classifier's two FFN layers")
    a("--aux-hidden", type=tasks.positive_int, help="units of the auxiliary LSTM layers")
    seen = tasks.first_look(p, argv)
    p.set_defaults(**preset(seen))
    args = tasks.parse(p, argv)
    args.unconfirmed = [k for k in UNCONFIRMED if getattr(args, k) == p.get_default(k)]
    if args.layers not in (None, 1):
        p.error(f"--layers {args.layers}: the main network is a 1-layer LSTM (paper section 4)")
    if args.aux_hidden < args.hidden_size:
        p.error(f"--aux-hidden {args.aux_hidden} must be >= --hidden-size {args.hidden_size} (the "
                f"decoder's bottom layer starts from the main LSTM's state)")
    if not args.benchmark and args.task in ("mnist", "pmnist", "cifar10") and \
            args.seq_len != TASK_DEFAULTS[args.task]["seq_len"]:
        p.error(f"--seq-len is fixed by the images for {args.task}: "
                f"{TASK_DEFAULTS[args.task]['seq_len']}")
    for key, value in MODEL_DEFAULTS.get(args.model, {}).items():
        if getattr(args, key) != value:
            p.error(f"--{key.replace('_', '-')}: --model {args.model} has {key} {value}")
    # the benchmark times r-LSTM whatever --model, at --seq-len if given, else from T = 1024
    given = tasks.flags_given(argv)
    shortest = args.seq_len if not args.benchmark or "--seq-len" in given else 1024
    if (args.model != "lstm" or args.benchmark) and not 2 <= args.aux_len <= shortest:
        p.error(f"--aux-len {args.aux_len} does not fit --seq-len {shortest} (need 2 <= "
                f"aux_len <= T)")
    if args.test_seq_len:
        p.error("--test-seq-len: the tasks of rlstm.py have one fixed length")
    if args.task == "stanford_dogs" and math.isqrt(args.seq_len) ** 2 != args.seq_len:
        p.error(f"--seq-len {args.seq_len}: stanford_dogs needs a square (side^2: 1024, 4096, "
                f"16384)")
    trunc = "full" if args.bptt == 0 else f"trunc{args.bptt}"
    if args.model != "lstm" and args.aux_bptt != args.bptt:  # the run name says what differs
        trunc += "-aux" + ("full" if args.aux_bptt == 0 else str(args.aux_bptt))
    args.tag = tasks.run_tag(p, args, f"T{args.seq_len}-{trunc}")
    return args


def checkpoint_segment(seq_len):
    """Steps per --grad-checkpoint segment: about sqrt(T)."""
    return max(1, int(math.sqrt(seq_len)))


KINDS = {"rlstm": "r", "plstm": "p", "lstm": None}  # --model -> RLSTM(kind=...)


def build_model(args, task):
    """The RLSTM of a run: sizes and truncation from the command line, input and output sizes
    from the task; --grad-checkpoint recomputes segments of sqrt(T) steps."""
    return RLSTM(task.vocab, task.n_out, channels=task.n_in, kind=KINDS[args.model],
                 aux_len=args.aux_len, n_anchors=args.anchors, bptt=args.bptt,
                 aux_bptt=args.aux_bptt, embed=args.embed_size, hidden=args.hidden_size,
                 ffn=args.ffn_size, aux_hidden=args.aux_hidden,
                 checkpoint_every=checkpoint_segment(args.seq_len) if args.grad_checkpoint else 0)


def training_losses(model, x, y, sample_prob, supervised, amp_dtype=None):
    """(L_sup or None, L_aux or None) of a training step: the RLSTM's forward pass (see RLSTM)
    under autocast if amp_dtype is set."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(x, y, sample_prob, supervised)


@torch.no_grad()
def evaluate(model, task, split, device, amp_dtype, limit=None):
    """Classification metrics of the main network on a split (see tasks.summarize)."""
    model.eval()
    total = {}
    for x, y in task.eval_batches(split, limit=limit):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model.logits(x)
        tasks.add_stats(total, tasks.loss_and_stats(task.kind, out, y)[1])
    model.train()
    return tasks.summarize(task.kind, total, split)


def run_benchmark(args, device, amp_dtype, argv=None):
    """Time and memory of one training step (forward+backward, the auxiliary loss included) of
    r-LSTM Truncate300 against full-BP LSTM, with and without --grad-checkpoint, on random pixel
    tokens (256 values), at T = 1024, 4096, 16384 (or --seq-len)."""
    given = tasks.flags_given(argv)
    B = args.batch_size if "--batch-size" in given else 16
    lengths = [args.seq_len] if "--seq-len" in given else [1024, 4096, 16384]
    print(f"benchmark on {tasks.hardware(device)}, torch {torch.__version__}: B={B}, "
          f"embed {args.embed_size}, H={args.hidden_size}, decoder {args.aux_hidden}, "
          f"aux_len {args.aux_len}, anchors {args.anchors}, amp={amp_dtype}")
    mem_name = "peak CUDA MiB" if device.type == "cuda" else "saved-for-backward MiB"
    print(f"| model | T | ms / batch | {mem_name} |\n|---|---|---|---|")
    rows = [("rlstm", args.bptt or 300, args.aux_bptt or 300, False), ("lstm", 0, 0, False),
            ("lstm", 0, 0, True)]
    if args.compile:  # r-LSTM compiled too (tasks.compiled): the same step as one graph
        rows.insert(1, rows[0][:3] + ("compiled",))
    results = []
    for T in lengths:
        x = torch.randint(0, 256, (T, B, 1), device=device)
        y = torch.randint(0, 10, (B,), device=device)
        for model_name, bptt, aux_bptt, mode in rows:
            run_args = type(args)(**dict(vars(args), model=model_name, bptt=bptt,
                                         aux_bptt=aux_bptt, seq_len=T,
                                         grad_checkpoint=mode is True))
            task = type("BenchTask", (), dict(vocab=256, n_in=1, n_out=10))()
            model = build_model(run_args, task).to(device)
            losses = lambda x, y, model=model: training_losses(model, x, y, 0.0, True, amp_dtype)
            losses = tasks.compiled(losses, args, device) if mode == "compiled" else losses
            name = (f"{model_name} " + (f"Truncate{bptt}" if bptt else "Full BP")
                    + {True: " --grad-checkpoint", "compiled": ", compiled"}.get(mode, ""))

            def fn():
                sup, aux = losses(x, y)
                (sup + (aux if aux is not None else 0)).backward()
            if mode == "compiled":
                start = time.perf_counter()
                fn()
                name += f" (compiling took {time.perf_counter() - start:.0f} s)"
            sec, mem = tasks.benchmark(fn, device, repeats=2 if T > 4096 else 3)
            print(f"| {name} | {T} | {sec * 1e3:.0f} | {mem:.1f} |", flush=True)
            results.append(dict(model=name, T=T, ms=sec * 1e3, mem=mem))
    return results


def probe(args, task, device, amp_dtype):
    """One training step of this run on `device`, as a function (tasks.setup's --device auto)."""
    net, (x, y) = build_model(args, task).to(device), (v.to(device) for v in task.train_batch(0))
    return lambda: sum(v for v in training_losses(net, x, y, 0.0, True, amp_dtype)
                       if v is not None).backward()


def run_grad_flow(args, argv=None):
    """--grad-flow: grad_flow of r-LSTM, p-LSTM and LSTM, each with full BP and truncated at 300
    steps (or the --model and truncation given; with --eval-only, of that run's best checkpoint)
    on one training batch, printed and written to
    <out-dir>/rlstm-<task>-gradflow-<tag>[-<model>-best].csv. "<model> <truncation>" is the
    supervised loss's gradient, "... (auxiliary)" the auxiliary loss's."""
    device = tasks.setup(args)[0]
    task = make_task(args.task, args.seq_len, args.batch_size, args.data_dir, args.seed,
                     as_tokens=True)
    x, y = (v.to(device) for v in task.train_batch(0))
    argv = sys.argv[1:] if argv is None else argv
    given = tasks.flags_given(argv)
    runs = [[]] if args.eval_only or "--model" in given else [
        ["--model", m, *_bptt(full).split()] for m in MODELS for full in (True, False)]
    curves = {}
    for extra in runs:
        margs = parse_args([*argv, *extra])
        torch.manual_seed(args.seed)
        model = build_model(margs, task)
        if args.eval_only:
            model.load_state_dict(tasks.best_weights("rlstm.py", margs))
        label = f"{margs.model} " + ("full" if margs.bptt == 0 else f"trunc{margs.bptt}")
        start = time.time()
        sup, aux = grad_flow(model.to(device), x, y)
        print(f"== {label}: {time.time() - start:.1f} s")
        curves[label] = sup
        if aux is not None:
            curves[f"{label} (auxiliary)"] = aux
    suffix = f"-{args.model}-best" if args.eval_only else ""
    tasks.grad_flow_report(curves, os.path.join(
        args.out_dir, f"rlstm-{args.task}-gradflow-{args.tag}{suffix}.csv"))


def main(argv=None):
    """Trains one model on one task: first --pretrain-epochs of the auxiliary loss alone, then
    L_sup + L_aux (section 3); tests the best validation checkpoint, writes
    <out-dir>/rlstm-<task>-<model>-<tag>.json (the record, returned) and .csv (a row per step)."""
    args = parse_args(argv)
    if args.benchmark:
        return run_benchmark(args, *tasks.setup(args)[:2], argv)
    if args.grad_flow:
        return run_grad_flow(args, argv)
    run = tasks.Run("rlstm.py", args, argv)  # refusals, lock and Ctrl-C before any data
    task = make_task(args.task, args.seq_len, args.batch_size, args.data_dir, args.seed,
                     args.test_seq_len, as_tokens=True, eval_size=args.eval_size)
    device, amp_dtype, use_scaler = tasks.setup(args, lambda dev, amp: probe(args, task, dev, amp))
    with torch.device("meta"):
        tasks.check_fits(build_model(args, task), task, args, device)
    model = build_model(args, task).to(device)
    opt = (torch.optim.RMSprop if args.optimizer == "rmsprop" else torch.optim.Adam)(
        model.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    pretrain_steps = round(args.pretrain_epochs * max(1, len(task.data["train"][1])
                                                      // args.batch_size))
    run.start(model, task, device, opt=opt, scaler=scaler)
    print(f"== UNCONFIRMED defaults (not given by the paper): " + ", ".join(
        f"{k}={getattr(args, k)}" for k in args.unconfirmed) + f"\n== schedule: {pretrain_steps} "
          f"auxiliary-only pretraining steps ({args.pretrain_epochs} epochs), then the losses "
          f"together" if args.model != "lstm" else "== schedule: the supervised loss alone")
    forward_loss = tasks.compiled(  # with --compile one graph per phase, and their backward
        lambda *a: training_losses(model, *a, amp_dtype), args, device)

    while run.training():
        x, y = (v.to(device) for v in task.train_batch(run.step))
        supervised = run.step >= pretrain_steps    # phase 1: L_aux alone; phase 2: L_sup + L_aux
        sample_prob = args.ss_max * min(1.0, run.step / (args.ss_steps or args.steps))
        sup, aux = forward_loss(x, y, torch.tensor(sample_prob, device=device)
                                if args.ss_max else 0.0, supervised)
        loss = sum(v for v in (sup, aux) if v is not None)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = nn.utils.clip_grad_norm_(model.parameters(), args.clip or math.inf)  # before
        scaler.step(opt)
        scaler.update()
        run.step_done(loss, grad_norm=norm, sample_prob=sample_prob)
        if run.eval_due():
            run.log(evaluate(model, task, "valid", device, amp_dtype, limit=args.eval_size),
                    phase="joint" if supervised else "pretrain", **{
                        f"{k}_loss": v.item() for k, v in dict(sup=sup, aux=aux).items()
                        if v is not None})

    # Test at the best validation checkpoint.
    model.load_state_dict(run.best_weights())
    return run.finish(evaluate(model, task, "test", device, amp_dtype, args.test_size),
                      evaluate(model, task, "valid", device, amp_dtype, args.eval_size),
                      paper=paper_number(args), pretrain_steps=pretrain_steps,
                      unconfirmed_defaults={k: getattr(args, k) for k in args.unconfirmed})


if __name__ == "__main__":
    tasks.run_main(main)
