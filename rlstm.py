"""r-LSTM / p-LSTM: LSTMs with auxiliary losses (Trinh, Dai, Luong, Le, ICML 2018, arXiv 1803.00144).

    python rlstm.py --task mnist --quick                        # CPU, minutes: r-LSTM learns MNIST
    python rlstm.py --task mnist --model rlstm                  # paper: r-LSTM Truncate300
    python rlstm.py --task mnist --model lstm --bptt 0          # paper: LSTM Full BP
    python rlstm.py --task pmnist --model plstm --bptt 0 --aux-bptt 0   # p-LSTM Full BP
    python rlstm.py --benchmark                                 # time and memory at T = 1k/4k/16k

The model classes (`TokenEmbedding`, `MainNet`, `AuxDecoder`, `draw_anchors`, `aux_windows`) need
torch alone and can be copied into other code.
Models (`--model`):
    rlstm  main LSTM + decoder that reconstructs the --aux-len elements before a random anchor
           (scheduled sampling), section 3
    plstm  main LSTM + decoder that predicts the --aux-len elements after the anchor (LM loss)
    lstm   the same main network without auxiliary loss
Truncation (section 3, Table 2): the supervised loss is backpropagated through the last --bptt
steps of the main LSTM and the auxiliary loss through the --aux-bptt steps before each anchor
(300 and 300: the "Truncate300" rows; --bptt 0 --aux-bptt 0: the "Full BP" rows).
"""
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import tasks  # data, metrics, checkpoints and results; the model classes below do not need it

# ----------------------------------------------------------------------------------------------
# Model: needs torch alone.


class TokenEmbedding(nn.Module):
    """Embeds C channels of tokens per step and sums them (CIFAR-10: R, G and B pixel values).

    Inputs: x, LongTensor (T, B, C) of values in [0, vocab). Output: (T, B, dim).
    """

    def __init__(self, vocab, channels, dim):
        super().__init__()
        self.vocab, self.channels = vocab, channels
        self.table = nn.Embedding(vocab * channels, dim)
        self.register_buffer("offset", torch.arange(channels) * vocab, persistent=False)

    def forward(self, x):
        if x.dim() != 3 or x.shape[2] != self.channels:
            raise ValueError(f"TokenEmbedding expects tokens of shape (T, B, {self.channels}), "
                             f"got {tuple(x.shape)}")
        return self.table(x + self.offset).sum(2)


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


def _lstm_final(lstm, x, h, c):
    _, (h, c) = lstm(x, (h[None].to(x.dtype), c[None].to(x.dtype)))
    return h[0], c[0]


class MainNet(nn.Module):
    """The main network of r-LSTM / p-LSTM (Trinh et al. 2018, section 4): embedding -> 1-layer LSTM
    -> the last hidden state -> 2-layer feed-forward (ReLU) -> class logits; with truncated
    backpropagation and the LSTM states at anchors for the auxiliary loss.

    Truncation is exact and per loss: the state where a gradient window starts is computed without
    gradient (detached), then the window is recomputed with gradient. The supervised loss sees the
    last `bptt` steps; the state at anchor a (after reading x[0..a-1]) sees x[a-aux_bptt .. a-1].
    Memory for the gradient windows is O(bptt + anchors * aux_bptt), independent of T.

    Args:
        vocab: values per input channel (256 for pixels), or 0 for float inputs of size `embed`.
        channels: tokens per step C (1; 3 for CIFAR-10 RGB).
        n_classes: classes of the supervised task.
        embed, hidden, ffn: embedding size (128), LSTM units H (128), feed-forward width (256).
        checkpoint_every: if > 0, recompute gradient windows in segments of this many steps.
    Inputs of forward: x, bptt, anchors, aux_bptt, supervised
        x: LongTensor (T, B, C) tokens, or FloatTensor (T, B, embed) already-embedded inputs.
        bptt: steps of the supervised gradient window (0: all T).
        anchors: optional LongTensor (N, B) of anchor positions in [1, T], N anchors per sample.
        aux_bptt: steps of the auxiliary gradient window before each anchor (0: back to t = 0).
        supervised: False skips the classifier (auxiliary pretraining).
    Outputs: logits, anchor_state
        logits: (B, n_classes), or None if not supervised.
        anchor_state: (h, c), each (N, B, H), the LSTM state after reading x[0..a-1] at every
            anchor a; None if anchors is None.
    """

    block = 1024  # steps per nn.LSTM call in the no-gradient pass

    def __init__(self, vocab, channels, n_classes, embed=128, hidden=128, ffn=256,
                 checkpoint_every=0):
        super().__init__()
        self.embed_size, self.hidden_size, self.checkpoint_every = embed, hidden, checkpoint_every
        self.embed = TokenEmbedding(vocab, channels, embed) if vocab else None
        self.lstm = nn.LSTM(embed, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, ffn), nn.ReLU(), nn.Linear(ffn, ffn), nn.ReLU(),
                                  nn.Linear(ffn, n_classes))

    def _embed(self, x):
        if x.dtype == torch.long:
            if self.embed is None:
                raise ValueError("this MainNet has vocab=0: it takes float inputs (T, B, embed)")
            return self.embed(x)
        if x.dim() != 3 or x.shape[2] != self.embed_size:
            raise ValueError(f"MainNet expects float inputs of shape (T, B, {self.embed_size}), "
                             f"got {tuple(x.shape)}")
        return x

    @torch.no_grad()
    def states_at(self, x, pos):
        """LSTM states without gradient. x: (T, B, ...) inputs; pos: LongTensor (N, B) in [0, T].
        Returns (h, c), each (N, B, H): the state after reading x[0..pos-1] (zeros at pos 0).
        One forward pass over x[0 .. max(pos)), split at the distinct positions and into blocks
        of at most `block` steps."""
        B, H = x.shape[1], self.hidden_size
        stops = [p for p in pos.unique().tolist() if p > 0]
        h = c = torch.zeros(B, H, device=x.device)
        hs, cs, t = [h], [c], 0
        for p in stops:
            for s in range(t, p, self.block):  # blocks: transient memory independent of T
                h, c = _lstm_final(self.lstm, self._embed(x[s:min(s + self.block, p)]), h, c)
            hs.append(h.float())
            cs.append(c.float())
            t = p
        where = torch.searchsorted(torch.tensor([0] + stops, device=pos.device), pos)  # (N, B)
        cols = torch.arange(B, device=x.device).expand_as(pos)
        return torch.stack(hs)[where, cols], torch.stack(cs)[where, cols]

    def window(self, x, ends, K, init):
        """LSTM states at `ends` with gradient reaching only the K inputs before each end.

        Args:
            x: (T, B, C) tokens or (T, B, embed) floats.
            ends: LongTensor (N, B) in [1, T].
            K: window length in steps (>= 1).
            init: (h, c), each (N, B, H): the states after reading x[0..max(end-K, 0)-1], e.g.
                from `states_at` (they are used detached).
        Returns: (h, c), each (N, B, H).
        """
        N, B = ends.shape
        K = min(K, int(ends.max()))
        idx = ends.unsqueeze(-1) - K + torch.arange(K, device=ends.device)  # (N, B, K)
        start = (-idx[..., 0]).clamp(min=0).reshape(-1)  # windows that begin at t = 0 start late
        cols = torch.arange(B, device=ends.device).view(1, B, 1).expand(N, B, K)
        xs = x[idx.clamp(min=0).permute(2, 0, 1), cols.permute(2, 0, 1)]  # (K, N, B, ...)
        xs = self._embed(xs.reshape(K, N * B, *x.shape[2:]))               # (K, N*B, embed)
        h, c = (s.detach().reshape(N * B, -1).to(xs.dtype) for s in init)
        cuts = sorted(set(start.tolist()) | {0, K})
        parts = xs.split([b - a for a, b in zip(cuts, cuts[1:])])  # split: see _lstm_run
        for cut, part in zip(cuts[1:], parts):
            h, c = _lstm_run(self.lstm, part, h, c, self.checkpoint_every)
            if cut < K:  # samples whose sequence starts here start from zero
                begins = (start == cut)[:, None]
                h, c = torch.where(begins, 0.0, h), torch.where(begins, 0.0, c)
        return h.view(N, B, -1), c.view(N, B, -1)

    def forward(self, x, bptt=0, anchors=None, aux_bptt=0, supervised=True):
        T, B = x.shape[:2]
        if not torch.is_grad_enabled() and anchors is None:  # evaluation: one plain pass
            zeros = torch.zeros(B, self.hidden_size, device=x.device)
            h, _ = _lstm_final(self.lstm, self._embed(x), zeros, zeros)
            return self.head(h), None
        K_sup = T if bptt == 0 else min(bptt, T)
        K_aux = T if aux_bptt == 0 else aux_bptt
        ends = [torch.full((1, B), T, device=x.device)] if supervised else []
        if anchors is not None:
            ends.append(anchors)
        Ks = [K_sup] * supervised + [K_aux] * (anchors is not None)
        starts = torch.cat([(e - K).clamp(min=0) for e, K in zip(ends, Ks)])
        if starts.max() > 0:
            h0, c0 = self.states_at(x, starts)
        else:
            h0 = c0 = torch.zeros(len(starts), B, self.hidden_size, device=x.device)
        logits = anchor_state = None
        i = 0
        if supervised:
            h, _ = self.window(x, ends[0], K_sup, (h0[:1], c0[:1]))
            logits = self.head(h[0])
            i = 1
        if anchors is not None:
            anchor_state = self.window(x, anchors, K_aux, (h0[i:], c0[i:]))
        return logits, anchor_state


def draw_anchors(kind, T, aux_len, n, batch_size, generator=None, device=None):
    """Anchor positions, drawn independently for every sample of every batch (section 3).

    An anchor a is the position after reading x[0..a-1]. r-LSTM reconstructs x[a-L .. a-1], so
    a is in [L, T]; p-LSTM predicts x[a .. a+L-2] from x[a-1] on, so a is in [1, T-L+1].
    Returns: LongTensor (n, batch_size).
    """
    low, high = (aux_len, T) if kind == "rlstm" else (1, T - aux_len + 1)
    if low > high or aux_len < 2:
        raise ValueError(f"--aux-len {aux_len} does not fit a sequence of {T} steps (need 2 <= "
                         f"aux_len <= T)")
    return torch.randint(low, high + 1, (n, batch_size), generator=generator, device=device)


def aux_windows(kind, x, anchors, aux_len):
    """The subsequence each anchor's decoder works on: (L, N*B, C) tokens.

    r-LSTM: x[a-L .. a-1], the L elements before the anchor; p-LSTM: x[a-1 .. a+L-2], the last
    element read and the L-1 after it. The decoder is fed element 0 and predicts elements 1..L-1.
    x: (T, B, C) tokens; anchors: (N, B).
    """
    N, B = anchors.shape
    first = anchors - aux_len if kind == "rlstm" else anchors - 1                   # (N, B)
    idx = first.unsqueeze(0) + torch.arange(aux_len, device=x.device).view(-1, 1, 1)  # (L, N, B)
    cols = torch.arange(B, device=x.device).view(1, 1, B).expand_as(idx)
    return x[idx, cols].reshape(aux_len, N * B, x.shape[2])


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
        h, c = (F.pad(s, (0, self.pad)) for s in state)  # bottom layer: the main state
        z = torch.zeros_like(h)                           # top layer: zero
        return (h[None], c[None]), (z[None], z[None])

    def _run(self, inputs, s1, s2):
        e = self.embed(inputs)
        o1, s1 = self.lstm1(e, tuple(s.to(e.dtype) for s in s1))
        o2, s2 = self.lstm2(o1, tuple(s.to(o1.dtype) for s in s2))
        L, B = inputs.shape[:2]
        return self.out(o2).view(L, B, self.channels, self.vocab), s1, s2

    def forward(self, state, inputs):
        return self._run(inputs, *self._init(state))[0]

    @torch.no_grad()
    def sample_inputs(self, state, window, sample_prob, generator=None):
        """Scheduled-sampling inputs, step by step without gradient.

        state: (h, c) each (B, main_hidden); window: LongTensor (L, B, C).
        Returns: inputs (L-1, B, C) to pass to forward, and the step loop's logits (L-1, B, C, V).
        """
        s1, s2 = self._init(state)
        inp, inputs, logits = window[0], [window[0]], []
        for k in range(1, len(window)):
            logit, s1, s2 = self._run(inp[None], s1, s2)
            logits.append(logit[0])
            if k == len(window) - 1:
                break
            inp = window[k]
            if sample_prob > 0:
                u = torch.rand(inp.shape[0], 1, generator=generator, device=inp.device)
                g = torch.empty(logit[0].shape, device=inp.device).exponential_(generator=generator)
                own = (logit[0].float() - g.log()).argmax(-1)  # Gumbel-max: a sample of softmax
                inp = torch.where(u < sample_prob, own, inp)
            inputs.append(inp)
        return torch.stack(inputs), torch.stack(logits)


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
QUICK = {  # CPU scale, minutes: smaller batch and decoder, fewer steps, a 4.5-minute cap
    t: dict(batch_size=32, aux_len=200, aux_hidden=128, pretrain_epochs=0.03, steps=2000,
            eval_every=250, eval_size=500, time_budget=3.75, ss_max=0.25, ss_steps=1000)
    for t in TASKS}
# Table 2 of the paper (tasks.RLSTM_TABLE2), test accuracy %, keyed by (task, model, full BP?).
PAPER = {(task, model, full): f"{value} ({'Full BP' if full else 'Truncate300'})"
         for task, values in tasks.RLSTM_TABLE2.items()
         for (_, model, full), value in zip(tasks.RLSTM_TABLE2_ROWS, values)}


def paper_number(args):
    """Table 2's number for this run's row, or UNCONFIRMED where the paper has no such row."""
    same = args.model == "lstm" or args.aux_bptt == args.bptt
    if same and args.bptt in (0, 300):
        return PAPER.get((args.task, args.model, args.bptt == 0), "UNCONFIRMED")
    return "UNCONFIRMED"


def parse_args(argv=None):
    p = tasks.common_parser(__doc__.split("\n")[0], TASKS, MODELS)
    a = p.add_argument
    a("--bptt", type=tasks.nonneg_int,
      help="backpropagate the supervised loss through the last N steps (0: full BP)")
    a("--aux-bptt", type=tasks.nonneg_int,
      help="backpropagate the auxiliary loss through the N steps before each anchor (0: full)")
    a("--aux-len", type=tasks.positive_int, help="length L of the auxiliary subsequence")
    a("--anchors", type=tasks.positive_int, help="anchors per sequence, redrawn every batch")
    a("--pretrain-epochs", type=float,
      help="epochs of auxiliary-loss-only training before L_sup + L_aux (may be fractional)")
    a("--ss-max", type=float,
      help="r-LSTM scheduled sampling: final probability of feeding the decoder's own sample")
    a("--ss-steps", type=tasks.positive_int,
      help="steps over which the sampling probability grows linearly from 0 to --ss-max "
           "(default: --steps)")
    a("--optimizer", choices=["rmsprop", "adam"])
    a("--embed-size", type=tasks.positive_int)
    a("--ffn-size", type=tasks.positive_int)
    a("--aux-hidden", type=tasks.positive_int, help="units of the auxiliary LSTM layers")
    args = p.parse_args(argv)
    args.seq_len_given = args.seq_len is not None
    args.batch_size_given = args.batch_size is not None
    cfg = {**DEFAULTS, **TASK_DEFAULTS[args.task], **(QUICK[args.task] if args.quick else {})}
    args.unconfirmed = sorted(k for k in UNCONFIRMED if getattr(args, k, None) is None)
    for k, v in cfg.items():  # command line wins over task defaults
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.ss_steps = args.ss_steps or args.steps
    if args.layers not in (None, 1):
        p.error(f"--layers {args.layers}: the main network is a 1-layer LSTM (paper section 4)")
    if not 0 <= args.ss_max <= 1:
        p.error(f"--ss-max must be in [0, 1], got {args.ss_max}")
    if args.pretrain_epochs < 0:
        p.error(f"--pretrain-epochs must be >= 0, got {args.pretrain_epochs}")
    if args.aux_hidden < args.hidden_size:
        p.error(f"--aux-hidden {args.aux_hidden} must be >= --hidden-size {args.hidden_size} (the "
                f"decoder's bottom layer starts from the main LSTM's state)")
    if not args.benchmark and args.task in ("mnist", "pmnist", "cifar10") and \
            args.seq_len != TASK_DEFAULTS[args.task]["seq_len"]:
        p.error(f"--seq-len is fixed by the images for {args.task}: "
                f"{TASK_DEFAULTS[args.task]['seq_len']}")
    if args.model == "lstm":
        args.pretrain_epochs, args.ss_max = 0.0, 0.0
    elif args.model == "plstm":
        args.ss_max = 0.0  # a language-model loss: teacher forcing
    if args.model != "lstm" and not args.benchmark and not 2 <= args.aux_len <= args.seq_len:
        p.error(f"--aux-len {args.aux_len} does not fit --seq-len {args.seq_len} (need 2 <= "
                f"aux_len <= T)")
    trunc = "full" if args.bptt == 0 else f"trunc{args.bptt}"
    args.tag = args.tag or f"T{args.seq_len}-{trunc}" + ("-quick" if args.quick else "")
    return args


def checkpoint_segment(seq_len):
    """Steps per --grad-checkpoint segment: about sqrt(T)."""
    return max(1, int(math.sqrt(seq_len)))


class Model(nn.Module):
    """Holds MainNet (`main`) and, for rlstm / plstm, the AuxDecoder (`decoder`; None for lstm);
    `losses` runs them."""

    def __init__(self, args, task):
        super().__init__()
        C = task.n_in  # tokens per step: 1, or 3 for CIFAR-10 RGB
        self.main = MainNet(task.vocab, C, task.n_out, args.embed_size, args.hidden_size,
                            args.ffn_size)
        self.decoder = (AuxDecoder(task.vocab, C, args.hidden_size, args.embed_size,
                                   args.aux_hidden, args.ffn_size) if args.model != "lstm" else None)


def build_model(args, task):
    return Model(args, task)


def as_steps(x):
    """(T, B) tokens -> (T, B, 1); (T, B, C) unchanged."""
    return x.unsqueeze(2) if x.dim() == 2 else x


def losses(model, x, y, args, sample_prob, supervised=True):
    """One training forward pass. x: (T, B, C) tokens; y: (B,) labels.
    Returns (L_sup or None, L_aux or None), each a scalar tensor."""
    T, B = x.shape[:2]
    anchors = None
    if model.decoder is not None:
        anchors = draw_anchors(args.model, T, args.aux_len, args.anchors, B, device=x.device)
    logits, state = model.main(x, args.bptt, anchors, args.aux_bptt, supervised)
    sup = F.cross_entropy(logits.float(), y) if supervised else None
    aux = None
    if anchors is not None:
        win = aux_windows(args.model, x, anchors, args.aux_len)           # (L, N*B, C)
        st = tuple(s.reshape(-1, s.shape[-1]) for s in state)              # (N*B, H)
        inputs = win[:-1]
        if sample_prob > 0:
            inputs, _ = model.decoder.sample_inputs(st, win, sample_prob)
        out = model.decoder(st, inputs)                                    # (L-1, N*B, C, V)
        aux = F.cross_entropy(out.float().reshape(-1, out.shape[-1]), win[1:].reshape(-1))
    return sup, aux


@torch.no_grad()
def evaluate(model, task, split, device, amp_dtype, limit=None):
    """Classification metrics of the main network on a split (see tasks.summarize)."""
    model.eval()
    total = {}
    for x, y in task.eval_batches(split, limit=limit):
        x, y = as_steps(x).to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out, _ = model.main(x)
        tasks.add_stats(total, tasks.loss_and_stats(task.kind, out, y)[1])
    model.train()
    return tasks.summarize(task.kind, total, split)


def run_benchmark(args, device, amp_dtype):
    """Time and memory of one training step (forward+backward, the auxiliary loss included) of
    r-LSTM Truncate300 against full-BP LSTM, with and without --grad-checkpoint, on random pixel
    tokens (256 values), at T = 1024, 4096, 16384 (or --seq-len)."""
    B = args.batch_size if args.batch_size_given else 16
    lengths = [args.seq_len] if args.seq_len_given else [1024, 4096, 16384]
    print(f"benchmark on {tasks.hardware(device)}, torch {torch.__version__}: B={B}, "
          f"embed {args.embed_size}, H={args.hidden_size}, decoder {args.aux_hidden}, "
          f"aux_len {args.aux_len}, anchors {args.anchors}, amp={amp_dtype}")
    mem_name = "peak CUDA MiB" if device.type == "cuda" else "saved-for-backward MiB"
    print(f"| model | T | ms / batch | {mem_name} |\n|---|---|---|---|")
    rows = [("rlstm", args.bptt or 300, args.aux_bptt or 300, False), ("lstm", 0, 0, False),
            ("lstm", 0, 0, True)]
    results = []
    for T in lengths:
        x = torch.randint(0, 256, (T, B, 1), device=device)
        y = torch.randint(0, 10, (B,), device=device)
        for model_name, bptt, aux_bptt, ckpt in rows:
            cfg = dict(vars(args), model=model_name, bptt=bptt, aux_bptt=aux_bptt)
            run_args = type(args)(**cfg)
            task = type("BenchTask", (), dict(vocab=256, n_in=1, n_out=10))()
            model = Model(run_args, task).to(device)
            model.main.checkpoint_every = checkpoint_segment(T) if ckpt else 0

            def fn():
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    sup, aux = losses(model, x, y, run_args, 0.0)
                (sup + (aux if aux is not None else 0)).backward()
            sec, mem = tasks.benchmark(fn, device, repeats=2 if T > 4096 else 3)
            name = (f"{model_name} " + (f"Truncate{bptt}" if bptt else "Full BP")
                    + (" --grad-checkpoint" if ckpt else ""))
            print(f"| {name} | {T} | {sec * 1e3:.0f} | {mem:.1f} |", flush=True)
            results.append(dict(model=name, T=T, ms=sec * 1e3, mem=mem))
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = tasks.pick_device(args.device)
    amp_dtype, use_scaler = tasks.amp_settings(args.amp, device)
    torch.manual_seed(args.seed)
    if args.benchmark:
        return run_benchmark(args, device, amp_dtype)
    name = f"rlstm-{args.task}-{args.model}-{args.tag}"
    last_path = os.path.join(args.out_dir, "ckpt", name + ".pt")
    best_path = os.path.join(args.out_dir, "ckpt", name + "-best.pt")
    if args.resume and not os.path.exists(last_path):
        raise SystemExit(f"error: no checkpoint {last_path} to resume from (check --task, "
                         f"--model, --tag / --bptt / --quick and --out-dir)")
    try:
        task = tasks.make_task(args.task, args.seq_len, args.batch_size, args.data_dir, args.seed,
                               args.test_seq_len, as_tokens=True, eval_size=args.eval_size)
    except tasks.DataError as e:
        raise SystemExit(f"error: {e}")
    model = build_model(args, task).to(device)
    if args.grad_checkpoint:
        model.main.checkpoint_every = checkpoint_segment(args.seq_len)
    params = model.parameters()
    opt = (torch.optim.RMSprop(params, lr=args.lr) if args.optimizer == "rmsprop"
           else torch.optim.Adam(params, lr=args.lr))
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    metric, larger_is_better = tasks.SELECT[task.kind]
    per_epoch = max(1, len(task.data["train"][1]) // args.batch_size)
    pretrain_steps = round(args.pretrain_epochs * per_epoch)

    step, best, history, elapsed = 0, None, [], 0.0
    if args.resume:
        ck = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        scaler.load_state_dict(ck["scaler"])
        tasks.set_rng_state(ck["rng"])
        step, best, history, elapsed = ck["step"], ck["best"], ck["history"], ck["elapsed"]

    print(f"== rlstm.py | task: {task.description}")
    print(f"== config: " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))
    if args.unconfirmed:
        print(f"== UNCONFIRMED defaults (not given by the paper): "
              + ", ".join(f"{k}={getattr(args, k)}" for k in args.unconfirmed))
    print(f"== schedule: {pretrain_steps} auxiliary-only pretraining steps "
          f"({args.pretrain_epochs} epochs of {per_epoch} steps), then L_sup + L_aux"
          if args.model != "lstm" else "== schedule: supervised loss only")
    print(f"== device: {device} ({tasks.hardware(device)}), amp={amp_dtype}, seed={args.seed}, "
          f"params={sum(p.numel() for p in model.parameters()):,}"
          + (f", resumed at step {step}" if step else ""))

    def save_last():
        tasks.save_checkpoint(last_path, dict(
            model=model.state_dict(), opt=opt.state_dict(), scaler=scaler.state_dict(),
            rng=tasks.rng_state(), step=step, best=best, history=history, elapsed=elapsed,
            config=vars(args)))

    from tqdm import tqdm
    t_start = time.time() - elapsed
    bar = tqdm(total=args.steps, initial=step, disable=step >= args.steps, mininterval=5,
               desc=name, dynamic_ncols=True)
    while step < args.steps:
        x, y = task.train_batch(step)
        x, y = as_steps(x).to(device), y.to(device)
        supervised = step >= pretrain_steps            # phase 1: L_aux alone; phase 2: L_sup + L_aux
        sample_prob = args.ss_max * min(1.0, step / args.ss_steps)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            sup, aux = losses(model, x, y, args, sample_prob, supervised)
        loss = sum(v for v in (sup, aux) if v is not None)
        if not torch.isfinite(loss):
            bar.close()
            raise SystemExit(f"error: non-finite loss {loss.item()} at step {step}; stopping. "
                             f"The last good checkpoint is {last_path} (step "
                             f"{history[-1]['step'] if history else 0}).")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if args.clip:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        scaler.step(opt)
        scaler.update()
        step += 1
        bar.update(1)
        parts = {"sup": sup, "aux": aux}
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in parts.items() if v is not None},
                        refresh=False)
        out_of_time = args.time_budget and time.time() - t_start > args.time_budget * 60
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            val = evaluate(model, task, "valid", device, amp_dtype, limit=args.eval_size)
            elapsed = time.time() - t_start
            rec = dict(step=step, loss=loss.item(), seconds=round(elapsed, 1), phase=
                       "joint" if supervised else "pretrain", sample_prob=round(sample_prob, 4),
                       **{f"{k}_loss": v.item() for k, v in parts.items() if v is not None}, **val)
            history.append(rec)
            if best is None or (val[metric] > best if larger_is_better else val[metric] < best):
                best = val[metric]
                tasks.save_checkpoint(best_path, dict(model=model.state_dict(), step=step))
            save_last()
            bar.write(f"step {step} ({rec['phase']}): loss {loss.item():.4f} "
                      + " ".join(f"{k} {v:.4f}" for k, v in rec.items() if k.endswith("_loss"))
                      + " " + " ".join(f"{k} {v:.4f}" for k, v in val.items())
                      + f" (best {metric} {best:.4f}, {elapsed / 60:.1f} min)")
        if out_of_time:
            bar.write(f"time budget of {args.time_budget} min reached at step {step}")
            break
    bar.close()

    # Test at the best validation checkpoint.
    ck = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(ck["model"])
    test = evaluate(model, task, "test", device, amp_dtype, limit=args.test_size)
    val = evaluate(model, task, "valid", device, amp_dtype, limit=args.eval_size)
    record = dict(
        script="rlstm.py", config=vars(args), task=task.description,
        metric=metric.replace("valid", "test"),
        paper=paper_number(args),
        unconfirmed_defaults={k: getattr(args, k) for k in args.unconfirmed},
        metrics={**test, **val}, best_step=ck["step"], steps_done=step, history=history,
        pretrain_steps=pretrain_steps, wall_seconds=elapsed,
        peak_memory_mb=tasks.peak_memory_mb(device), device=str(device),
        hardware=tasks.hardware(device), torch=torch.__version__, git_commit=tasks.git_commit(),
        command="python " + " ".join(sys.argv) if argv is None else "rlstm.main(" + str(argv) + ")")
    path = tasks.write_results(os.path.join(args.out_dir, name + ".json"), record)
    print(f"== test at best validation step {ck['step']}: "
          + " ".join(f"{k} {v:.4f}" for k, v in test.items()) + f" | paper: {record['paper']}")
    print(f"== wrote {path}")
    return record


if __name__ == "__main__":
    main()
