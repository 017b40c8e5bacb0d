"""rlstm.py: anchors, gradient windows, the RLSTM module against a slow reference and copied out
alone, scheduled sampling, the two phases, learning, resume, grad-checkpoint, the StanfordDogs and
DBpedia parsers, the CLI and the benchmark."""
import csv
import json
import math
import re
import struct
import tarfile
import warnings
import zlib

import pytest
import torch
import torchvision.datasets.utils

import rlstm
import tasks
from conftest import saved_weights


# ----------------------------------------------------------------------------------------------
# A tiny classification task in the ImageTask interface: "sticky" token sequences (each token
# repeats the previous one with probability 0.8, so the auxiliary losses can be learnt) and the
# label is token T-3 >= 4.

class TinyTask:
    kind, n_in, vocab, n_out = "classify", 1, 8, 2
    description = "tiny: T=24, label = token[T-3] >= 4"

    def __init__(self, seq_len=24, batch_size=16, seed=0, **_):
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        g = torch.Generator().manual_seed(123)
        self.data = {s: self._make(n, g) for s, n in (("train", 512), ("valid", 64), ("test", 64))}

    def _make(self, n, g):
        x = torch.randint(0, 8, (n, self.seq_len), generator=g)
        keep = torch.rand(n, self.seq_len, generator=g) < 0.8
        for t in range(1, self.seq_len):
            x[:, t] = torch.where(keep[:, t], x[:, t - 1], x[:, t])
        return x, (x[:, -3] >= 4).long()

    def train_batch(self, step):
        x, y = self.data["train"]
        idx = torch.randperm(len(x), generator=tasks.step_generator(self.seed, step))[:self.batch_size]
        return x[idx].t(), y[idx]

    def eval_batches(self, split, limit=None):
        x, y = self.data[split]
        n = len(x) if limit is None else min(limit, len(x))
        for s in range(0, n, self.batch_size):
            yield x[s:s + self.batch_size].t(), y[s:s + self.batch_size]


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(rlstm, "make_task", lambda name, seq_len, batch_size, *a, **k:
                        TinyTask(seq_len, batch_size))


def _run(tmp_path, *extra):
    args = ["--task", "dbpedia", "--seq-len", "24", "--batch-size", "16", "--hidden-size", "16",
            "--embed-size", "8", "--ffn-size", "16", "--aux-hidden", "16", "--aux-len", "6",
            "--bptt", "8", "--aux-bptt", "5", "--eval-every", "5", "--out-dir", str(tmp_path),
            "--threads", "1", *extra]
    return rlstm.main(args)


# ----------------------------------------------------------------------------------------------
# Anchors

def test_anchors_differ_across_samples_and_batches_and_stay_in_range():
    torch.manual_seed(0)
    a1 = rlstm.draw_anchors("r", 784, 600, 1, 64)
    a2 = rlstm.draw_anchors("r", 784, 600, 1, 64)
    assert a1.shape == (1, 64) and len(a1.unique()) > 20, "anchors differ across samples"
    assert not torch.equal(a1, a2), "anchors are redrawn for every batch"
    assert a1.min() >= 600 and a1.max() <= 784
    p = rlstm.draw_anchors("p", 784, 600, 3, 64)
    assert p.shape == (3, 64) and p.min() >= 1 and p.max() <= 185
    with pytest.raises(ValueError, match="does not fit"):
        rlstm.draw_anchors("r", 100, 600, 1, 4)
    with pytest.raises(ValueError, match="kind must be"):
        rlstm.draw_anchors("rlstm", 784, 600, 1, 4)


def test_training_draws_new_anchors_every_batch(tiny, tmp_path, monkeypatch):
    seen = []
    real = rlstm.draw_anchors
    monkeypatch.setattr(rlstm, "draw_anchors", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    _run(tmp_path, "--steps", "3")
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1])
    assert all(len(s.unique()) > 1 for s in seen)


def test_aux_windows_are_the_elements_before_or_after_the_anchor():
    T, B = 20, 3
    x = torch.arange(T).view(T, 1, 1).expand(T, B, 1) * 10 + torch.arange(B).view(1, B, 1)
    anchors = torch.tensor([[6, 11, 20]])
    r = rlstm.aux_windows("r", x, anchors, 4)  # x[a-4 .. a-1]
    assert r[:, :, 0].t().tolist() == [[20, 30, 40, 50], [71, 81, 91, 101], [162, 172, 182, 192]]
    p = rlstm.aux_windows("p", x, anchors[:, :2], 4)  # x[a-1 .. a+2]
    assert p[:, :, 0].t().tolist() == [[50, 60, 70, 80], [101, 111, 121, 131]]
    # RLSTM checks the anchors it is given (aux_windows does not: it would synchronise)
    y = torch.zeros(B, dtype=torch.long)
    for kind, anchors in (("r", [[3, 11, 20]]), ("p", [[6, 11, 20]])):  # 3 - 4 < 0; 19 + 4 > T
        model = rlstm.RLSTM(300, 3, kind=kind, aux_len=4, embed=4, hidden=6, ffn=8, aux_hidden=6)
        with pytest.raises(ValueError, match="anchors out of range"):
            model(x, y, anchors=torch.tensor(anchors))


# ----------------------------------------------------------------------------------------------
# Gradient windows, checked with gradients on the (already embedded) inputs

def _net(checkpoint_every=0):
    torch.manual_seed(0)
    return rlstm.MainNet(0, 1, 3, embed=4, hidden=6, ffn=8, checkpoint_every=checkpoint_every)


def test_anchor_states_equal_a_plain_lstm_run():
    net = _net()
    x = torch.randn(30, 4, 4)
    anchors = torch.tensor([[5, 17, 30, 1], [12, 12, 29, 3]])
    with torch.no_grad():
        out, _ = net.lstm(x)
    for aux_bptt in (0, 4, 40):
        _, (h, c) = net(x, bptt=7, anchors=anchors, aux_bptt=aux_bptt)
        want = out[anchors - 1, torch.arange(4)]
        assert torch.allclose(h, want, atol=1e-5), aux_bptt
    logits, _ = net(x, bptt=7)
    with torch.no_grad():
        assert torch.allclose(logits, net(x)[0], atol=1e-5)


@pytest.mark.parametrize("aux_bptt", [5, 0])
def test_auxiliary_gradient_stops_aux_bptt_steps_before_the_anchor(aux_bptt):
    net = _net()
    T = 30
    x = torch.randn(T, 3, 4, requires_grad=True)
    anchors = torch.tensor([[20, 9, 3]])
    _, (h, c) = net(x, bptt=7, anchors=anchors, aux_bptt=aux_bptt, supervised=False)
    (h.sum() + c.sum()).backward()
    g = x.grad.norm(dim=2)  # (T, B)
    for b, a in enumerate(anchors[0].tolist()):
        lo = max(a - aux_bptt, 0) if aux_bptt else 0
        assert (g[lo:a, b] > 0).all(), (b, g[:, b])
        assert (g[:lo, b] == 0).all() and (g[a:, b] == 0).all(), (b, g[:, b])


@pytest.mark.parametrize("bptt", [7, 0])
def test_supervised_gradient_stops_bptt_steps_before_the_end(bptt):
    net = _net()
    T = 30
    x = torch.randn(T, 3, 4, requires_grad=True)
    logits, _ = net(x, bptt=bptt, anchors=torch.tensor([[20, 9, 3]]), aux_bptt=5)
    logits.sum().backward()  # the anchor states are not used: only the supervised path
    g = x.grad.norm(dim=2)
    lo = T - bptt if bptt else 0
    assert (g[lo:] > 0).all() and (g[:lo] == 0).all(), g


def test_grad_checkpoint_gives_the_same_gradients():
    x = torch.randn(31, 3, 4, requires_grad=True)
    anchors = torch.tensor([[20, 9, 31]])

    def grads(every):
        net = _net(every)
        x.grad = None
        logits, (h, c) = net(x, bptt=0, anchors=anchors, aux_bptt=0)
        (logits.pow(2).sum() + h.sum()).backward()
        return [x.grad.clone()] + [p.grad.clone() for p in net.parameters()], logits.detach()

    plain, out_plain = grads(0)
    ckpt, out_ckpt = grads(4)
    assert torch.allclose(out_plain, out_ckpt, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(plain, ckpt))


# ----------------------------------------------------------------------------------------------
# The RLSTM module: against the slow reference, copied out alone, argument checks

def _rlstm(kind, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cfg = dict(channels=2, kind=kind, aux_len=4, n_anchors=2, bptt=7, aux_bptt=6, embed=4,
               hidden=6, ffn=8, aux_hidden=9)
    return rlstm.RLSTM(5, 3, **{**cfg, **kw}).to(dtype)


# anchors in range for T = 20, L = 4; 4 and 5 (r) and 1 and 3 (p) are < aux_bptt = 6, so their
# gradient windows begin at t = 0; equal anchors in one column share a window start
ANCHORS = {"r": torch.tensor([[4, 20, 9], [5, 13, 9]]),
           "p": torch.tensor([[1, 17, 9], [3, 12, 9]]), None: None}


@pytest.mark.parametrize("kind,kw,supervised", [
    (kind, kw, supervised) for kind, kw in [
        ("r", {}), ("p", {}), (None, {}), ("r", dict(bptt=0, aux_bptt=0)),
        ("r", dict(checkpoint_every=2)), ("p", dict(n_anchors=1, aux_bptt=30))]
    for supervised in (True, False) if kind or supervised])  # kind None needs supervised
def test_rlstm_losses_and_gradients_equal_the_slow_reference_in_float64(kind, kw, supervised):
    model = _rlstm(kind, **kw)
    x = torch.randint(0, 5, (20, 3, 2), generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 1])
    anchors = ANCHORS[kind]
    if kw.get("n_anchors") == 1:
        anchors = anchors[:1]

    def run(fn):
        model.zero_grad()
        sup, aux = fn()
        sum(v for v in (sup, aux) if v is not None).backward()
        return [v for v in (sup, aux) if v is not None], {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast, g_fast = run(lambda: model(x, y, 0.0, supervised, anchors))
    slow, g_slow = run(lambda: rlstm.rlstm_losses_reference(model, x, y, anchors, supervised))
    assert fast[0].dtype == torch.float64 and len(fast) == len(slow)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(fast, slow))
    assert g_fast.keys() == g_slow.keys() and len(g_fast) > 0
    for name in g_fast:
        assert torch.allclose(g_fast[name], g_slow[name], rtol=1e-9, atol=1e-12), name
    if not supervised:
        assert not any(n.startswith("main.head") for n in g_fast), "no classifier in phase 1"


def _copy_list():
    """The names the RLSTM docstring says to copy with it."""
    doc = rlstm.RLSTM.__doc__
    text = doc[doc.index("Copy with it:"):doc.index("(imports")]
    return re.findall(r"`(\w+)`", text)


def test_rlstm_works_when_copied_out_under_the_standard_imports():
    import inspect
    names = _copy_list()
    sources = {name: inspect.getsource(getattr(rlstm, name)) for name in ["RLSTM", *names]}
    for name in names:  # the list is exact: every helper is used by RLSTM or another helper
        assert any(re.search(rf"\b{name}\b", src) for other, src in sources.items()
                   if other != name), f"{name} is listed but not used"
    namespace = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional,
                 "checkpoint": torch.utils.checkpoint.checkpoint}
    for src in sources.values():
        exec(src, namespace)
    cfg = dict(channels=2, kind="r", aux_len=5, bptt=6, aux_bptt=4, embed=8, hidden=8, ffn=16,
               aux_hidden=12, checkpoint_every=3)
    torch.manual_seed(0)
    copied = namespace["RLSTM"](8, 3, **cfg)
    torch.manual_seed(0)
    original = rlstm.RLSTM(8, 3, **cfg)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 8, (24, 4, 2), generator=g), torch.randint(0, 3, (4,), generator=g)
    for t in range(1, 24):  # sticky tokens, as in TinyTask: the auxiliary loss can be learnt
        x[t] = torch.where(torch.rand(4, 2, generator=g) < 0.9, x[t - 1], x[t])
    opt = torch.optim.Adam(copied.parameters(), lr=3e-2)
    history = []
    for step in range(8):
        torch.manual_seed(step)  # anchors and scheduled sampling: the same draws for both
        sup, aux = copied(x, y, sample_prob=0.5, supervised=step > 0)
        torch.manual_seed(step)
        want = original(x, y, sample_prob=0.5, supervised=step > 0)
        assert [v.item() for v in (sup, aux) if v is not None] == \
            [v.item() for v in want if v is not None]
        opt.zero_grad()
        (aux if sup is None else sup + aux).backward()
        assert copied.main.lstm.weight_hh_l0.grad.abs().sum() > 0
        assert copied.decoder.lstm1.weight_hh_l0.grad.abs().sum() > 0
        opt.step()
        original.load_state_dict(copied.state_dict())
        history.append(aux.item())
    assert all(math.isfinite(v) for v in history) and history[-1] < history[0]
    with torch.no_grad():
        assert copied.logits(x).shape == (4, 3)


def test_rlstm_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="kind must be"):
        rlstm.RLSTM(8, 3, kind="rlstm")
    with pytest.raises(ValueError, match="aux_len >= 2"):
        rlstm.RLSTM(8, 3, aux_len=1)
    with pytest.raises(ValueError, match="vocab > 0"):
        rlstm.RLSTM(0, 3, kind="p")
    with pytest.raises(ValueError, match="must be >= 0"):
        rlstm.RLSTM(8, 3, bptt=-1)
    with pytest.raises(ValueError, match="main_hidden 16 > decoder hidden 8"):
        rlstm.RLSTM(8, 3, hidden=16, aux_hidden=8)
    with pytest.raises(ValueError, match="aux_len 30 does not fit a sequence of 20"):
        rlstm.RLSTM(8, 3, aux_len=30)(torch.zeros(20, 2, dtype=torch.long), torch.zeros(2).long())
    with pytest.raises(ValueError, match="leaves nothing to compute"):
        rlstm.RLSTM(8, 3, kind=None)(torch.zeros(20, 2, dtype=torch.long), supervised=False)
    lstm = rlstm.RLSTM(0, 3, kind=None, embed=4, hidden=6, ffn=8, bptt=5)  # float inputs
    sup, aux = lstm(torch.randn(20, 2, 4), torch.tensor([0, 2]))
    assert sup.shape == () and aux is None


# ----------------------------------------------------------------------------------------------
# Scheduled sampling

def _decoder_and_window():
    torch.manual_seed(0)
    dec = rlstm.AuxDecoder(8, 2, main_hidden=6, embed=4, hidden=10, ffn=12)
    state = (torch.randn(5, 6), torch.randn(5, 6))
    window = torch.randint(0, 8, (9, 5, 2))
    return dec, state, window


def test_scheduled_sampling_at_probability_0_equals_teacher_forcing():
    dec, state, window = _decoder_and_window()
    inputs, loop_logits = dec.sample_inputs(state, window, 0.0)
    assert torch.equal(inputs, window[:-1])
    with torch.no_grad():
        tf = dec(state, window[:-1])
    assert tf.shape == (8, 5, 2, 8)
    assert torch.allclose(loop_logits, tf, atol=1e-5)


def test_scheduled_sampling_feeds_own_samples_and_the_vectorised_pass_matches_the_loop():
    dec, state, window = _decoder_and_window()
    torch.manual_seed(1)
    inputs, loop_logits = dec.sample_inputs(state, window, 1.0)
    assert torch.equal(inputs[0], window[0]), "the first element is always fed"
    assert not torch.equal(inputs[1:], window[1:-1]), "p = 1 feeds the decoder's own samples"
    with torch.no_grad():
        assert torch.allclose(dec(state, inputs), loop_logits, atol=1e-5)
    torch.manual_seed(1)
    half, _ = dec.sample_inputs(state, window, 0.5)
    mixed = (half[1:] == window[1:-1]).all(-1).float().mean()
    assert 0.3 < mixed < 1.0


def test_decoder_bottom_layer_starts_from_the_main_state():
    dec, state, window = _decoder_and_window()
    other = (state[0] + 1, state[1])
    with torch.no_grad():
        assert not torch.allclose(dec(state, window[:-1]), dec(other, window[:-1]))


# ----------------------------------------------------------------------------------------------
# Training: two phases, learning, resume

def test_two_phase_schedule(tiny, tmp_path, monkeypatch):
    flags = []
    real = rlstm.RLSTM.forward

    def spy(model, x, y=None, sample_prob=0.0, supervised=True, anchors=None):
        flags.append((supervised, sample_prob))
        return real(model, x, y, sample_prob, supervised, anchors)
    monkeypatch.setattr(rlstm.RLSTM, "forward", spy)
    # 512 training samples / batch 16 = 32 steps per epoch; 0.125 epochs = 4 pretraining steps
    rec = _run(tmp_path, "--steps", "8", "--pretrain-epochs", "0.125",
               "--eval-every", "4", "--ss-max", "0.4", "--ss-steps", "4")
    assert [f[0] for f in flags] == [False] * 4 + [True] * 4
    assert [round(float(f[1]), 2) for f in flags] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4]
    assert rec["pretrain_steps"] == 4
    assert [h["phase"] for h in rec["history"]] == ["pretrain", "joint"]
    assert "sup_loss" not in rec["history"][0] and "sup_loss" in rec["history"][1]


def test_pretraining_leaves_the_classifier_untouched(tiny, tmp_path, monkeypatch):
    models = []
    real = rlstm.build_model
    monkeypatch.setattr(rlstm, "build_model", lambda a, t: models.append(real(a, t)) or models[-1])
    torch.manual_seed(0)
    _run(tmp_path, "--steps", "4", "--pretrain-epochs", "1")
    torch.manual_seed(0)
    fresh = real(rlstm.parse_args(["--task", "mnist", "--hidden-size", "16", "--embed-size", "8",
                                   "--ffn-size", "16", "--aux-hidden", "16", "--aux-len", "6"]),
                 TinyTask())
    trained = next(m for m in models if m.main.lstm.weight_hh_l0.device.type != "meta")
    head = [(a, b) for a, b in zip(trained.main.head.parameters(), fresh.main.head.parameters())]
    assert all(torch.equal(a, b) for a, b in head), "the classifier is not trained in phase 1"
    assert not torch.equal(trained.main.lstm.weight_hh_l0, fresh.main.lstm.weight_hh_l0)


@pytest.mark.parametrize("model", ["rlstm", "plstm", "lstm"])
def test_short_run_lowers_the_loss(tiny, tmp_path, model):
    rec = _run(tmp_path, "--model", model, "--steps", "60", "--eval-every", "20",
               "--pretrain-epochs", "0", "--lr", "1e-2")
    ce = [h["valid_ce"] for h in rec["history"]]
    assert ce[-1] < 0.8 * ce[0] or ce[-1] < 0.35, ce
    if model != "lstm":
        aux = [h["aux_loss"] for h in rec["history"]]  # uniform guess: ln 8 = 2.08 nats
        assert aux[-1] < 0.8 * math.log(8), aux


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    extra = ["--steps", "20", "--pretrain-epochs", "0.2", "--ss-max", "0.5"]
    full = _run(tmp_path / "a", *extra)
    real = TinyTask.train_batch

    def dies_at_step_12(self, step):
        if step == 12:
            raise KeyboardInterrupt
        return real(self, step)
    monkeypatch.setattr(TinyTask, "train_batch", dies_at_step_12)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", *extra)
    monkeypatch.setattr(TinyTask, "train_batch", real)
    resumed = _run(tmp_path / "b", *extra, "--resume")
    assert [h["step"] for h in resumed["history"]] == [5, 10, 15, 20]
    assert resumed["metrics"] == full["metrics"]
    name = f"rlstm-dbpedia-rlstm-{full['config']['tag']}.pt"
    assert full["config"]["tag"].startswith("T24-trunc8-aux5-")  # + the hash of the other flags
    a, b = (saved_weights(tmp_path / run / "ckpt" / name) for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_results_file_has_the_promised_fields(tiny, tmp_path):
    rec = _run(tmp_path, "--steps", "5")
    saved = json.loads((tmp_path / f"rlstm-dbpedia-rlstm-{rec['config']['tag']}.json").read_text())
    for key in ("config", "metrics", "wall_seconds", "peak_memory_mb", "device", "torch",
                "git_commit", "task", "paper", "hardware", "command", "unconfirmed_defaults"):
        assert key in saved
    assert saved["metrics"] == rec["metrics"] and "test_acc" in saved["metrics"]
    assert saved["paper"] == "UNCONFIRMED"  # bptt 8 is not a row of Table 2
    args = rlstm.parse_args(["--task", "mnist", "--model", "rlstm"])
    assert rlstm.paper_number(args) == "96.4 (Truncate300)"
    args = rlstm.parse_args(["--task", "cifar10", "--model", "lstm", "--bptt", "0"])
    assert rlstm.paper_number(args) == "58.8 (Full BP)"


def test_real_mnist_training_step(mnist_data_dir):
    """One r-LSTM forward+backward at the paper's sizes on real MNIST pixel tokens."""
    task = tasks.make_task("mnist", batch_size=4, data_dir=mnist_data_dir, as_tokens=True)
    args = rlstm.parse_args(["--task", "mnist"])
    model = rlstm.build_model(args, task)
    x, y = task.train_batch(0)
    assert x.shape == (784, 4) and x.dtype == torch.long and int(x.max()) > 200
    sup, aux = model(x, y, sample_prob=0.1)
    (sup + aux).backward()
    assert 1.5 < sup.item() < 3.5 and 4.0 < aux.item() < 7.0  # about ln 10 and ln 256
    assert model.main.lstm.weight_hh_l0.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# CLI and benchmark

@pytest.mark.parametrize("args,message", [
    (["--task", "nope"], "invalid choice: 'nope'"),
    (["--resume", "--out-dir", "/nonexistent/dir"], "no checkpoint"),
])
def test_cli_bad_input_gives_one_line_error(args, message, cli):
    code, err = cli("rlstm.py", *args)
    assert code != 0 and message in err, err


@pytest.mark.parametrize("args,message", [
    (["--model", "sab"], "invalid choice: 'sab'"),
    (["--bptt", "-1"], "must be a non-negative integer, got -1"),
    (["--aux-len", "900"], "--aux-len 900 does not fit --seq-len 784"),
    (["--model", "plstm", "--aux-len", "785"], "--aux-len 785 does not fit --seq-len 784"),
    (["--quick", "--benchmark", "--seq-len", "128"], "--aux-len 200 does not fit --seq-len 128"),
    (["--ss-max", "2"], "argument --ss-max: must be a number in [0, 1], got 2"),
    (["--seq-len", "100"], "--seq-len is fixed by the images"),
    (["--layers", "2"], "the main network is a 1-layer LSTM"),
    (["--hidden-size", "300"], "--aux-hidden 256 must be >= --hidden-size 300"),
])
def test_bad_arguments_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        rlstm.parse_args(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_benchmark_prints_all_three_models(capsys):
    rlstm.main(["--benchmark", "--seq-len", "40", "--batch-size", "2", "--hidden-size", "8",
                "--embed-size", "8", "--aux-hidden", "8", "--ffn-size", "8", "--aux-len", "10",
                "--bptt", "12", "--aux-bptt", "12", "--threads", "1"])
    out = capsys.readouterr().out
    for row in ("| rlstm Truncate12 | 40 |", "| lstm Full BP | 40 |",
                "| lstm Full BP --grad-checkpoint | 40 |"):
        assert row in out


# ----------------------------------------------------------------------------------------------
# StanfordDogs: a fixture in the official layout (images.tar with Images/<wnid>-<breed>/*.jpg,
# lists.tar with MATLAB v5 file_list.mat / train_list.mat / test_list.mat), written here.

def _mat_el(kind, data):
    if 0 < len(data) <= 4:  # MATLAB's small data element format
        return struct.pack("<HH", kind, len(data)) + data.ljust(4, b"\0")
    return struct.pack("<II", kind, len(data)) + data + b"\0" * (-len(data) % 8)


def _mat_matrix(cls, dims, name, payload):
    return _mat_el(14, _mat_el(6, struct.pack("<II", cls, 0))
                   + _mat_el(5, struct.pack(f"<{len(dims)}i", *dims))
                   + _mat_el(1, name.encode()) + payload)


def _mat_cell_of_strings(name, strings):
    chars = [_mat_matrix(4, (1, len(s)), "", _mat_el(4, struct.pack(f"<{len(s)}H", *map(ord, s))))
             for s in strings]
    return _mat_matrix(1, (len(strings), 1), name, b"".join(chars))


def _write_mat(path, elements, compress):
    with open(path, "wb") as f:
        f.write(b"MATLAB 5.0 MAT-file, written by the rlstm tests".ljust(116) + b"\0" * 8
                + b"\x00\x01IM")
        for el in elements:
            if compress:
                z = zlib.compress(el)
                f.write(struct.pack("<II", 15, len(z)) + z)
            else:
                f.write(el)


BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def _dogs_fixture(root, first_label=1):
    """3 breeds x 3 images (train: 2 per breed, test: 1), in images.tar and lists.tar; labels
    first_label, first_label + 1, ... (the official lists: 1..120)."""
    import torchvision
    src = root / "src"
    files, labels = {"train": [], "test": []}, {"train": [], "test": []}
    torch.manual_seed(0)
    for c, breed in enumerate(BREEDS):
        (src / "Images" / breed).mkdir(parents=True)
        for i in range(3):
            name = f"{breed}/{breed.split('-')[0]}_{100 + i}.jpg"
            h, w = 40 + 10 * i, 60 - 10 * i      # non-square, as the real photos
            img = torch.full((3, h, w), 40 * (c + 1), dtype=torch.uint8)
            img[c] = 250                          # each breed a different dominant colour
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs
                warnings.simplefilter("ignore", DeprecationWarning)
                torchvision.io.write_file(str(src / "Images" / name),
                                          torchvision.io.encode_jpeg(img, quality=95))
            split = "train" if i < 2 else "test"
            files[split].append(name)
            labels[split].append(c + first_label)
    lists = src / "lists"
    lists.mkdir()
    # MATLAB often stores double labels in a smaller integer type (miUINT8): cover both.
    _write_mat(lists / "train_list.mat", [
        _mat_cell_of_strings("file_list", files["train"]),
        _mat_matrix(6, (len(labels["train"]), 1), "labels",
                    _mat_el(2, bytes(labels["train"])))], compress=True)
    _write_mat(lists / "test_list.mat", [
        _mat_cell_of_strings("file_list", files["test"]),
        _mat_matrix(6, (len(labels["test"]), 1), "labels",
                    _mat_el(9, struct.pack(f"<{len(labels['test'])}d", *labels["test"])))],
               compress=False)
    _write_mat(lists / "file_list.mat", [
        _mat_cell_of_strings("file_list", files["train"] + files["test"])], compress=True)
    folder = root / "data" / "stanford_dogs"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "images.tar", "w") as tar:
        tar.add(src / "Images", arcname="Images")
    with tarfile.open(folder / "lists.tar", "w") as tar:
        for name in ("file_list.mat", "train_list.mat", "test_list.mat"):
            tar.add(lists / name, arcname=name)
    return root / "data", files, labels


def _offline(url, root, filename=None, md5=None, **kw):  # torchvision's download_url, offline
    raise OSError("network unreachable")


def test_read_mat5_reads_cells_of_strings_and_numbers(tmp_path):
    path = tmp_path / "x.mat"
    _write_mat(path, [_mat_cell_of_strings("file_list", ["a/b.jpg", "x", ""]),
                      _mat_matrix(6, (2, 1), "labels", _mat_el(9, struct.pack("<2d", 3, 120)))],
               compress=False)
    assert rlstm.read_mat5(str(path)) == {"file_list": ["a/b.jpg", "x", ""], "labels": [3.0, 120.0]}
    (tmp_path / "bad.mat").write_bytes(b"\x89HDF\r\n" + b"\0" * 200)
    with pytest.raises(tasks.DataError, match="not a little-endian MATLAB v5"):
        rlstm.read_mat5(str(tmp_path / "bad.mat"))


def test_stanford_dogs_parser_on_an_official_layout_fixture(tmp_path, monkeypatch):
    data_dir, files, labels = _dogs_fixture(tmp_path)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _offline)  # the archives are there: no download
    monkeypatch.setattr(rlstm, "DOGS_SPLIT_SIZES", {"train": 6, "test": 3})
    task = rlstm.make_task("stanford_dogs", seq_len=64, batch_size=2, data_dir=str(data_dir),
                           as_tokens=True)
    x_test, y_test = task.data["test"]
    assert x_test.shape == (3, 64, 3) and x_test.dtype == torch.uint8
    assert y_test.tolist() == [0, 1, 2]                     # labels 1..120 -> 0..119
    for c in range(3):                                      # the right image under each label
        assert x_test[c].float().mean(0).argmax() == c
    assert len(task.data["train"][0]) + len(task.data["valid"][0]) == 6
    x, y = task.train_batch(0)
    assert x.shape == (64, 2, 3) and x.dtype == torch.long and task.n_out == 120
    cache = data_dir / "stanford_dogs" / "cache_8.pt"
    assert torch.equal(rlstm.load_stanford_dogs(str(data_dir), 8)["test"][0], x_test)  # cached
    good = torch.load(cache)
    torch.save({"train": good["train"], "test": (good["test"][0], good["test"][1] + 118)}, cache)
    with pytest.raises(tasks.DataError, match=r"test: labels outside 1..120 in .*cache_8.pt"):
        rlstm.load_stanford_dogs(str(data_dir), 8)                     # a tampered cache
    torch.save({"train": good["train"], "test": (good["test"][0][:, :16], good["test"][1])}, cache)
    with pytest.raises(tasks.DataError, match="not 3 images of 8x8 RGB"):
        rlstm.load_stanford_dogs(str(data_dir), 8)                     # another side's cache
    torch.save({"train": good["train"], "test": good["test"][0]}, cache)
    with pytest.raises(tasks.DataError, match="not 3 images of 8x8 RGB"):
        rlstm.load_stanford_dogs(str(data_dir), 8)                     # no (x, y) pair
    cache.write_bytes(b"truncated")
    with pytest.raises(tasks.DataError, match="cannot be read .* delete it"):
        rlstm.load_stanford_dogs(str(data_dir), 8)
    cache.unlink()
    monkeypatch.setattr(rlstm, "DOGS_SPLIT_SIZES", {"train": 12_000, "test": 8_580})
    with pytest.raises(tasks.DataError, match="the official split has 12000"):
        rlstm.load_stanford_dogs(str(data_dir), 4)
    with pytest.raises(ValueError, match="square seq_len"):
        rlstm.make_task("stanford_dogs", seq_len=1000, data_dir=str(data_dir))


@pytest.mark.parametrize("first_label", [0, 119])  # labels 0, 1, 2 or 119, 120, 121
def test_stanford_dogs_labels_outside_1_to_120_are_refused_before_decoding(tmp_path, monkeypatch,
                                                                           first_label):
    data_dir, _, _ = _dogs_fixture(tmp_path, first_label)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _offline)
    monkeypatch.setattr(rlstm, "DOGS_SPLIT_SIZES", {"train": 6, "test": 3})
    with pytest.raises(tasks.DataError, match="train_list.mat has labels outside 1..120"):
        rlstm.load_stanford_dogs(str(data_dir), 8)
    assert not (data_dir / "stanford_dogs" / "cache_8.pt").exists()


def test_stanford_dogs_missing_offline_is_a_one_line_error(tmp_path, monkeypatch, cli):
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _offline)
    code, err = cli("rlstm.py", "--task", "stanford_dogs", "--data-dir", str(tmp_path / "empty"),
                    "--steps", "1", "--out-dir", str(tmp_path))
    assert code == 1 and "Put the official images.tar and lists.tar" in err


# ----------------------------------------------------------------------------------------------
# DBpedia: a fixture in the layout of the extracted standard release (dbpedia_csv/*.csv).

DBPEDIA_ROWS = [
    (1, "E. D. Abbott Ltd", " Abbott of Farnham E D Abbott Limited was a British coachbuilding "
                            "business based in Farnham Surrey trading under that name from 1929."),
    (9, "Ghost Ship \"Q\"", "A film, with \"quotes\", commas, and ümlauts."),
    (14, "Zoo", "Short."),
]


def _dbpedia_fixture(root):
    folder = root / "dbpedia" / "dbpedia_csv"
    folder.mkdir(parents=True)
    for split, rows in (("train", DBPEDIA_ROWS * 20), ("test", DBPEDIA_ROWS)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f, quoting=csv.QUOTE_NONNUMERIC).writerows(rows)
    (folder / "classes.txt").write_text("\n".join(f"Class{i}" for i in range(1, 15)) + "\n")
    return root


def test_dbpedia_parser_on_a_fixture(tmp_path, monkeypatch):
    data_dir = _dbpedia_fixture(tmp_path)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _offline)
    raw = rlstm.load_dbpedia(str(data_dir))
    texts, labels = raw["test"]
    assert labels.tolist() == [0, 8, 13]
    assert texts[1] == 'Ghost Ship "Q" A film, with "quotes", commas, and ümlauts.'
    task = rlstm.make_task("dbpedia", seq_len=40, batch_size=4, data_dir=str(data_dir))
    x, y = task.train_batch(0)
    assert x.shape == (40, 4) and x.dtype == torch.long and task.n_out == 14
    assert 0 <= x.min() and x.max() < task.vocab
    enc = rlstm.encode_chars(["Zoo Short.", "ü"], 12)[:, :, 0]
    a = rlstm.DBPEDIA_ALPHABET
    assert enc[0].tolist() == [0, 0] + [a.index(c) + 2 for c in "zoo short."]  # right-aligned
    assert enc[1].tolist() == [0] * 11 + [1]                                    # unknown char
    assert len(task.data["train"][0]) + len(task.data["valid"][0]) == 60


def test_make_task_builds_dogs_and_dbpedia_here_and_defers_the_rest_to_tasks(tmp_path):
    data_dir = _dbpedia_fixture(tmp_path)
    assert isinstance(rlstm.make_task("dbpedia", 40, 4, str(data_dir)), rlstm.DBpediaTask)
    copy = rlstm.make_task("copy", 10, 4, str(tmp_path))
    assert isinstance(copy, tasks.SyntheticTask) and copy.train_batch(0)[0].shape == (30, 4)
    with pytest.raises(ValueError, match="unknown task"):
        rlstm.make_task("nope")


def test_dbpedia_bad_rows_and_missing_data_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _offline)
    with pytest.raises(tasks.DataError, match="dca7b1ae12b1091090db52aa7ec5ca64"):
        rlstm.load_dbpedia(str(tmp_path / "empty"))
    data_dir = _dbpedia_fixture(tmp_path)
    with open(data_dir / "dbpedia" / "dbpedia_csv" / "train.csv", "a") as f:
        f.write('15,"title","class out of range"\n')
    with pytest.raises(tasks.DataError, match="row 61: expected"):
        rlstm.load_dbpedia(str(data_dir))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dbpedia").mkdir()
    (tmp_path / "bad" / "dbpedia" / "dbpedia_csv.tar.gz").write_bytes(b"truncated")
    with pytest.raises(tasks.DataError, match="fails its MD5 checksum"):
        rlstm.load_dbpedia(str(tmp_path / "bad"))


def test_grad_flow_shows_each_loss_within_its_truncation_window():
    """The supervised loss's gradient reaches the last `bptt` states only, the auxiliary loss's
    the `aux_bptt` states up to the anchor (section 3); the losses are forward's."""
    torch.manual_seed(0)
    T, B = 40, 3
    for kind in ("r", "p"):
        m = rlstm.RLSTM(10, 5, kind=kind, aux_len=8, bptt=10, aux_bptt=5, embed=8, hidden=8,
                        ffn=8, aux_hidden=8)
        x, y = torch.randint(0, 10, (T, B)), torch.randint(0, 5, (B,))
        anchors = torch.full((1, B), 20)
        sup, aux = rlstm.grad_flow(m, x, y, anchors)
        assert {t + 1 for t in range(T) if sup[t] > 0} == set(range(31, 41))   # h_31 .. h_40
        assert {t + 1 for t in range(T) if aux[t] > 0} == set(range(16, 21))   # h_16 .. h_20
        want = m(x, y, anchors=anchors)
        assert [float(v) for v in rlstm.grad_flow.losses] == pytest.approx(
            [float(v.detach()) for v in want], rel=1e-6)
    m = rlstm.RLSTM(10, 5, kind=None, bptt=0, embed=8, hidden=8, ffn=8)
    sup, aux = rlstm.grad_flow(m, x, y)
    assert aux is None and bool((sup > 0).all())  # full BP: every state


def test_grad_flow_command_writes_supervised_and_auxiliary_curves(tmp_path, mnist_data_dir, capsys):
    rlstm.main(["--task", "mnist", "--grad-flow", "--model", "rlstm", "--batch-size", "4", "--tag", "g",
                "--data-dir", mnist_data_dir, "--out-dir", str(tmp_path)])
    rows = (tmp_path / "rlstm-mnist-gradflow-g.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} == {"rlstm trunc300", "rlstm trunc300 (auxiliary)"}
    sup = [float(r.split(",")[3]) for r in rows[1:785]]
    aux = [float(r.split(",")[3]) for r in rows[785:]]
    assert all(v == 0 for v in sup[:784 - 300]) and all(v > 0 for v in sup[-10:])
    assert len(aux) == 784 and any(v > 0 for v in aux)
