"""sab.py: the sparsifier, gradient flow, equivalences, checkpoints, learning and the CLI."""
import json
import math
import os
import re
import sys

import pytest
import torch

import sab
import tasks
from conftest import ROOT, saved_weights

sys.path.insert(0, os.path.join(ROOT, "tools"))
import tables  # noqa: E402


def test_sparsify_keeps_exactly_k_top_weights_that_sum_to_one():
    torch.manual_seed(0)
    scores = torch.randn(16, 40)
    for k in (1, 3, 5, 39):
        w, index = sab.sparsify(scores, k, eps=1e-12)
        dense = torch.zeros_like(scores).scatter(1, index, w)
        assert ((dense > 0).sum(1) == k).all()
        assert torch.allclose(dense.sum(1), torch.ones(16), atol=1e-6)
        assert torch.equal(index.sort(1).values, scores.topk(k, 1).indices.sort(1).values)
    w, index = sab.sparsify(scores[:, :4], 5, eps=1e-12)  # fewer memories than k_top: all
    assert w.shape == (16, 4) and (w > 0).all()
    assert torch.allclose(w.sum(1), torch.ones(16), atol=1e-6)


def test_sparsify_epsilon_bounds_the_gradient_when_scores_tie():
    # the k_top best scores barely above the (k_top+1)-th: plain normalisation's gradient grows
    # as 1 / sum(w); the default eps (1e-3) caps it, and the read fades instead
    s = torch.tensor([[1.0, 1.0 + 1e-6, 1.0 + 2e-6, 0.0]], requires_grad=True)
    w, _ = sab.sparsify(s, 2)
    w[0, 0].backward()
    assert s.grad.abs().max() < 2e3 and w.sum() < 0.01
    s2 = s.detach().clone().requires_grad_()
    w2, _ = sab.sparsify(s2, 2, eps=1e-12)
    w2[0, 0].backward()
    assert s2.grad.abs().max() > 5e4  # what the epsilon prevents


def _input_grad(model, T=24, D=3, B=2, seed=0):
    """Gradient of the last output's sum with respect to every input step: (T,) of norms."""
    torch.manual_seed(seed)
    x = torch.randn(T, B, D, requires_grad=True)
    out, _ = model(x)
    out[-1].sum().backward()
    return x.grad.norm(dim=(1, 2))


def test_tbptt_gradient_stops_k_trunc_steps_back():
    torch.manual_seed(0)
    T, k = 24, 5
    g = _input_grad(sab.SAB(3, 8, k_top=0, k_trunc=k), T=T)
    last_cut = (T - 1) // k * k  # the last detach point before the final step
    assert (g[:T - k] == 0).all(), "no input earlier than k_trunc steps back gets gradient"
    assert (g[last_cut:] > 0).all()


def test_sab_gradient_reaches_attended_positions():
    torch.manual_seed(0)
    T, k_trunc, k_att = 24, 4, 2
    model = sab.SAB(3, 8, k_top=2, k_att=k_att, k_trunc=k_trunc)
    picked = []
    model.watch = lambda t, w, index, n: picked.append((w, index))
    g = _input_grad(model, T=T)
    weights, index = picked[-1]  # what the last step attended to, per sample
    write_steps = (index + 1) * k_att - 1  # memory i is h(t) at t = (i+1)*k_att - 1
    reached = write_steps[weights > 0].unique()
    assert (reached < T - k_trunc).any(), "the test needs an attended memory outside the window"
    assert (g[reached] > 0).all(), "gradient reaches every attended position"
    assert (g[:T - k_trunc] > 0).sum() > 0


def test_sab_without_attention_or_truncation_equals_nn_lstm():
    torch.manual_seed(0)
    D, H, T, B = 5, 16, 30, 4
    model = sab.SAB(D, H, k_top=0, k_trunc=0)
    lstm = torch.nn.LSTM(D, H)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(lstm, name + "_l0").copy_(getattr(model.cell, name))
    x = torch.randn(T, B, D, requires_grad=True)
    out, summaries = model(x)
    ref, _ = lstm(x)
    assert torch.allclose(out, ref, atol=1e-6) and (summaries == 0).all()
    gx = torch.autograd.grad(out.pow(2).sum(), x)[0]
    gref = torch.autograd.grad(ref.pow(2).sum(), x)[0]
    assert torch.allclose(gx, gref, atol=1e-6)


def step_loop(model, x, state=None):
    """SAB without attention written as the textbook truncated BPTT loop: nn.LSTMCell steps,
    (h, c) detached at every t with t % k_trunc == 0. Returns h(t) (T, B, H)."""
    h, c = state if state is not None else (x.new_zeros(x.shape[1], model.hidden_size),) * 2
    outputs = []
    for t, x_t in enumerate(x.unbind(0)):
        if model.k_trunc and t % model.k_trunc == 0:
            h, c = h.detach(), c.detach()
        h, c = model.cell(x_t, (h, c))
        outputs.append(h)
    return torch.stack(outputs)


@pytest.mark.parametrize("k_trunc,checkpoint_every", [(5, 0), (0, 0), (4, 7), (1, 0), (30, 0)])
def test_the_fused_lstm_path_equals_the_step_loop(k_trunc, checkpoint_every):
    # tbptt and lstm run one fused LSTM call per truncation window: the same values and the
    # same gradients (inputs, weights and a given initial state) as the step loop, with T not a
    # multiple of k_trunc and checkpoint segments that begin between truncation points
    torch.manual_seed(0)
    model = sab.SAB(3, 6, k_top=0, k_trunc=k_trunc, checkpoint_every=checkpoint_every).double()
    x = torch.randn(23, 4, 3, dtype=torch.float64, requires_grad=True)
    state = [torch.randn(4, 6, dtype=torch.float64, requires_grad=True) for _ in range(2)]

    def run(forward):
        model.zero_grad()
        for t in (x, *state):
            t.grad = None
        out = forward()
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return [out.detach(), x.grad] + [t.grad for t in state] + [
            p.grad for p in model.parameters() if p.grad is not None]

    fused = run(lambda: model(x, tuple(state))[0])
    loop = run(lambda: step_loop(model, x, tuple(state)))
    assert len(fused) == len(loop) == 8  # h, and the gradients of x, h0, c0 and the cell
    assert (fused[2] is None) == (loop[2] is None) == bool(k_trunc)  # t = 0 is a truncation point
    for a, b in zip(fused, loop):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_min_age_reads_only_memories_old_enough(attention):
    torch.manual_seed(0)
    model = sab.SAB(3, 8, k_top=2, k_att=1, k_trunc=5, attention=attention, min_age=6)
    seen = []  # (t, memories readable, the newest one read); memory j is h(j) (k_att 1)
    model.watch = lambda t, w, index, n: seen.append((t, n, index.max().item()))
    x = torch.randn(20, 2, 3)
    out, summaries = model(x)  # in the graph (dense: graph tensors of every memory)
    model.watch = None
    with torch.no_grad():
        again, _ = model(x)    # outside it (the memory bank)
    assert torch.allclose(out, again, atol=1e-6)
    assert (summaries[:6] == 0).all() and (summaries[6:] != 0).any(dim=2).all()
    assert [t for t, _, _ in seen] == list(range(6, 20))  # h(0) is 6 steps old at t = 6
    assert all(n == t - 5 and newest <= t - 6 for t, n, newest in seen)


@pytest.mark.parametrize("attention,k_trunc", [("sparse", 4), ("dense", 0)])
def test_grad_checkpoint_gives_the_same_gradients(attention, k_trunc):
    torch.manual_seed(0)
    model = sab.SAB(3, 8, k_top=3, k_att=2, k_trunc=k_trunc, attention=attention)
    x = torch.randn(29, 2, 3, requires_grad=True)

    def grads(every):
        model.checkpoint_every = every
        model.zero_grad()
        x.grad = None
        out, _ = model(x)
        out.pow(2).mean().backward()
        return [x.grad.clone()] + [p.grad.clone() for p in model.parameters()], out.detach()

    plain, out_plain = grads(0)
    ckpt, out_ckpt = grads(7)
    assert torch.equal(out_plain, out_ckpt)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(plain, ckpt))


def test_shape_error_is_clear():
    with pytest.raises(ValueError, match=r"\(T, B, 3\), got \(5, 3\)"):
        sab.SAB(3, 8)(torch.zeros(5, 3))


def _run(tmp_path, *extra):
    args = ["--task", "copy", "--seq-len", "4", "--hidden-size", "16", "--k-top", "2",
            "--k-trunc", "3", "--out-dir", str(tmp_path), "--eval-every", "5", "--tag", "T4",
            *extra]
    return sab.main(args)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full = _run(tmp_path / "a", "--steps", "20")
    real = tasks.SyntheticTask.train_batch

    def dies_at_step_12(self, step):
        if step == 12:
            raise KeyboardInterrupt
        return real(self, step)
    monkeypatch.setattr(tasks.SyntheticTask, "train_batch", dies_at_step_12)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", "--steps", "20")
    monkeypatch.setattr(tasks.SyntheticTask, "train_batch", real)
    resumed = _run(tmp_path / "b", "--steps", "20", "--resume")
    assert resumed["history"][2]["step"] == 15 and len(resumed["history"]) == 4
    assert resumed["metrics"] == full["metrics"]
    a, b = (saved_weights(tmp_path / run / "ckpt" / "sab-copy-sab-T4.pt") for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_written_before_a_flag_existed_resumes(tmp_path):
    _run(tmp_path, "--steps", "5")
    path = tmp_path / "ckpt" / "sab-copy-sab-T4.pt"
    ck = torch.load(path, weights_only=False)
    del ck["config"]["min_age"]  # as written before --min-age existed: a flag it does not know
    torch.save(ck, path)
    with pytest.raises(SystemExit, match=r"--k-top 3 \(checkpoint: 2\)"):  # one it knows
        _run(tmp_path, "--steps", "10", "--resume", "--k-top", "3")
    assert _run(tmp_path, "--steps", "10", "--resume")["steps_done"] == 10


def test_results_file_has_the_promised_fields(tmp_path):
    rec = _run(tmp_path, "--steps", "5")
    path = tmp_path / "sab-copy-sab-T4.json"
    saved = json.loads(path.read_text())
    for key in ("config", "metrics", "wall_seconds", "peak_memory_mb", "device", "torch",
                "git_commit", "task", "paper", "hardware", "command"):
        assert key in saved
    assert {"test_acc", "test_ce", "valid_acc"} <= set(saved["metrics"])
    assert saved["metrics"] == rec["metrics"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = tasks.loss_and_stats
    calls = []

    def nan_after_7(kind, out, y, stats=True):
        loss, stats = real(kind, out, y, stats)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 7 else loss), stats
    monkeypatch.setattr(tasks, "loss_and_stats", nan_after_7)
    with pytest.raises(SystemExit, match="non-finite loss nan at step 6: the run diverged.*"
                                         "results file records the test of the best"):
        _run(tmp_path, "--steps", "20")
    ck = torch.load(tmp_path / "ckpt" / "sab-copy-sab-T4.pt", weights_only=False)
    assert ck["step"] == 5 and all(torch.isfinite(v).all() for v in ck["model"].values())
    # a run that diverges has a result: its best checkpoint, tested, and where it broke
    with open(tmp_path / "sab-copy-sab-T4.json") as f:
        record = json.load(f)
    assert record["diverged"] == "non-finite loss nan at step 6"
    assert record["best_step"] == 5 and record["steps_done"] == 6
    assert all(math.isfinite(v) for v in record["metrics"].values())
    row = dict(label="SAB", paper="100", metric="test_acc")
    assert "(diverged: non-finite loss nan at step 6; best checkpoint tested)" in \
        tables._cell(row, [record])
    assert "(diverged)" in tables.format_table([record])
    assert "(diverged)" in tables.seeds_table([record])
    # the checkpoint remembers: --eval-only keeps the flag (and succeeds), --resume only tests
    monkeypatch.setattr(tasks, "loss_and_stats", real)
    assert _run(tmp_path, "--steps", "20", "--eval-only")["diverged"] == record["diverged"]
    with pytest.raises(SystemExit, match="at step 6: the run diverged"):
        _run(tmp_path, "--steps", "20", "--resume")
    with open(tmp_path / "sab-copy-sab-T4.json") as f:
        assert json.load(f)["steps_done"] == 5  # the checkpoint's step: nothing trained


def test_divergence_before_the_first_evaluation_writes_no_results(tmp_path, monkeypatch):
    real = tasks.loss_and_stats
    def nan_loss(kind, out, y, stats=True):
        return real(kind, out, y, stats)[0] * float("nan"), None
    monkeypatch.setattr(tasks, "loss_and_stats", nan_loss)
    with pytest.raises(SystemExit, match=r"non-finite loss nan at step 1: the run diverged and "
                                         r"stops; nothing of this state is saved. The checkpoint "
                                         r"on disk: none yet$"):
        _run(tmp_path, "--steps", "20")
    assert not (tmp_path / "sab-copy-sab-T4.json").exists()


def test_short_copy_run_learns_well_below_the_trivial_baseline(tmp_path):
    # Trivial baseline on the 10 recalled digits: uniform over 1..8, CE = ln 8 = 2.08 nats and
    # 12.5% accuracy. With T=1 the digits lie 11 steps before their recall, beyond k_trunc=5, so
    # SAB must learn through its attention connections.
    # The --quick network (H 64, cosine decay) with batch 32 at lr 1e-2 for 500 steps: test CE
    # 0.4-0.9 at 400 and 0.3-0.8 at 600 steps for seeds 0-2 (about 9 s).
    rec = sab.main(["--task", "copy", "--quick", "--seq-len", "1", "--batch-size", "32", "--lr",
                    "1e-2", "--steps", "500", "--eval-every", "250", "--eval-size", "256",
                    "--out-dir", str(tmp_path)])
    assert rec["metrics"]["test_ce"] < 0.75 * math.log(8), rec["metrics"]
    assert rec["metrics"]["test_acc"] > 30, rec["metrics"]


@pytest.mark.parametrize("args,message", [
    (["--task", "nope"], "invalid choice: 'nope'"),
    (["--model", "gru"], "invalid choice: 'gru'"),
    (["--hidden-size", "0"], "must be a positive integer, got 0"),
    (["--seq-len", "-3"], "must be a positive integer, got -3"),
    (["--seq-len", "10", "--k-top", "50"], "larger than the memory can hold"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a CUDA device"),
    (["--layers", "2"], "SAB is a single-layer model"),
    (["--resume", "--out-dir", "/nonexistent/dir"], "no checkpoint"),
    (["--clip", "-1"], "argument --clip: must be a number in [0, 1e+06], got -1"),
    (["--model", "tbptt", "--h0-memory"], "--h0-memory: --model tbptt has no attention memory"),
    (["--model", "lstm", "--quick", "--min-age", "6"],
     "--min-age: --model lstm has no attention memory"),
    (["--min-age", "0"], "argument --min-age: must be a positive integer, got 0"),
    (["--head", "x"], "invalid choice: 'x'"),
])
def test_cli_bad_input_gives_one_line_error(args, message, cli):
    code, err = cli("sab.py", *args)
    assert code != 0 and message in err, err


def test_missing_dataset_offline_is_a_one_line_error(tmp_path, monkeypatch, cli):
    import torchvision.datasets.utils

    def offline(url, root, filename=None, md5=None, **kw):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    code, err = cli("sab.py", "--task", "ptb", "--data-dir", str(tmp_path / "empty"), "--steps",
                    "1", "--out-dir", str(tmp_path))
    assert code == 1 and "ptb.char.train.txt" in err and len(err.strip().splitlines()) == 1


def test_transfer_evaluation_at_a_longer_test_seq_len(tmp_path):
    _run(tmp_path, "--steps", "5")
    rec = _run(tmp_path, "--eval-only", "--test-seq-len", "9")
    assert rec["config"]["test_seq_len"] == 9 and rec["steps_done"] == 5
    saved = json.loads((tmp_path / "sab-copy-sab-T4-test9.json").read_text())
    assert saved["metrics"]["test_acc"] == rec["metrics"]["test_acc"]
    assert "test T=9" in saved["task"]


def test_benchmark_prints_sab_and_both_baselines_in_one_run(capsys, monkeypatch):
    sab.main(["--benchmark", "--seq-len", "6", "--batch-size", "2", "--hidden-size", "8",
              "--k-top", "2"])
    out = capsys.readouterr().out
    rows = {l.split("|")[1].strip(): l.split("|") for l in out.splitlines() if "| 6 |" in l}
    assert set(rows) == {"sab (SAB class)", "LSTMCell loop", "nn.LSTM"}
    assert rows["LSTMCell loop"][4].strip() == "1.00x (1.00-1.00)"  # median (range) of rounds
    assert rows["nn.LSTM"][7].strip() == "1.00x"
    assert float(rows["sab (SAB class)"][6]) >= 0  # the memory bank column
    # the bank lives outside autograd, so the benchmark adds it: every tensor it holds after a
    # forward and backward (values, keys, scoring buffer, gradients)
    model, banks, write = sab.SAB(10, 8, k_top=2, k_att=2), [], sab.MemoryBank.write
    monkeypatch.setattr(sab.MemoryBank, "write",
                        lambda bank, *a: banks.append(bank) or write(bank, *a))
    model(torch.randn(6, 2, 10))[0].sum().backward()
    nbytes = sum(t.untyped_storage().nbytes() for t in (banks[0].mem, banks[0].keys,
                                                        banks[0].buffer, *banks[0].grads,
                                                        banks[0].rows))
    assert sab.bank_mib(model, T=6, B=2) == nbytes / 2**20
    assert sab.bank_mib(sab.SAB(10, 8, attention="dense"), 6, 2) == 0  # its graph is counted


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_evaluation_path_equals_the_training_path(attention):
    torch.manual_seed(0)
    model = sab.SAB(3, 8, k_top=2, k_att=3, attention=attention)
    x = torch.randn(41, 2, 3)
    out, summaries = model(x)
    with torch.no_grad():
        out2, summaries2 = model(x)
    if attention == "sparse":  # the same operations on both paths
        assert torch.equal(out.detach(), out2) and torch.equal(summaries.detach(), summaries2)
    else:  # evaluation scores dense attention in the memory bank, not in graph tensors
        assert torch.allclose(out.detach(), out2, atol=1e-6)
        assert torch.allclose(summaries.detach(), summaries2, atol=1e-6)


def test_test_size_limits_the_test_set(tmp_path, monkeypatch, mnist_data_dir):
    seen = {}
    real = tasks.ImageTask.eval_batches

    def counting(self, split, limit=None):
        for x, y in real(self, split, limit):
            seen[split] = seen.get(split, 0) + len(y)
            yield x, y
    monkeypatch.setattr(tasks.ImageTask, "eval_batches", counting)
    rec = sab.main(["--task", "pmnist", "--data-dir", mnist_data_dir, "--out-dir", str(tmp_path),
                    "--steps", "1", "--batch-size", "4", "--hidden-size", "8", "--eval-size", "4",
                    "--test-size", "6"])
    assert seen["test"] == 6 and rec["config"]["test_size"] == 6


def dense_reference(model, x):
    """SAB written plainly: every memory and every score in the autograd graph, memories picked
    with gather. Shares the parameters of `model` (a sab.SAB); returns h(t) (T, B, H)."""
    T, B, _ = x.shape
    h = c = x.new_zeros(B, model.hidden_size)
    memories, outputs = ([(-1, h)] if model.h0_memory else []), []  # (step written, h)
    for t, x_t in enumerate(x.unbind(0)):
        if model.k_trunc and t % model.k_trunc == 0:
            h, c = h.detach(), c.detach()
        h_hat, c = model.cell(x_t, (h, c))
        h = h_hat
        readable = [m for step, m in memories if step <= t - model.min_age]
        if readable:
            mem = torch.stack(readable, dim=1)  # (B, M, H)
            keys = model.key(mem.detach() if model.detach_keys else mem)
            s = model.score(torch.tanh(keys + model.query(h_hat)[:, None])).squeeze(2)
            w, index = sab.sparsify(s, model.k_top, model.norm_eps)
            picked = mem.gather(1, index[:, :, None].expand(-1, -1, mem.shape[2]))
            h = h_hat + (w[:, :, None] * picked).sum(1)
        if (t + 1) % model.k_att == 0:
            memories.append((t, h))
        outputs.append(h)
    return torch.stack(outputs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_bank_scores_are_the_papers_mlp_scores(dtype):
    """score_all computes v . tanh(k + q) as 2 v . sigmoid(2 (k + q)) - sum(v); the same number
    (float64: to rounding), and in float32 even when the bank holds bfloat16 (autocast)."""
    torch.manual_seed(0)
    B, H, A, n = 3, 8, 5, 7
    bank, token = sab.MemoryBank(slots=10), None
    mem, keys = torch.randn(B, n, H).to(dtype), (3 * torch.randn(B, n, A)).to(dtype)
    for j in range(n):
        token = bank.write(j, mem[:, j], keys[:, j], token)
    query, v = torch.randn(B, A, dtype=torch.float64), torch.randn(A, dtype=torch.float64)
    got = bank.score_all(query, v, n)
    want = torch.tanh(keys.double() + query[:, None]) @ v
    assert got.dtype == torch.promote_types(dtype, torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("k_trunc,h0_memory,detach_keys,min_age", [
    (5, False, True, 1), (0, False, True, 1), (3, True, True, 1), (5, False, False, 1),
    (0, False, False, 1), (5, False, True, 6), (3, True, True, 5)])
def test_sparse_replay_gradients_equal_the_dense_reference(k_trunc, h0_memory, detach_keys,
                                                           min_age):
    torch.manual_seed(0)
    model = sab.SAB(3, 8, k_top=3, k_att=2, k_trunc=k_trunc, h0_memory=h0_memory,
                    detach_keys=detach_keys, min_age=min_age).double()
    x = torch.randn(60, 4, 3, dtype=torch.float64, requires_grad=True)  # 30 memories > k_top

    def grads(forward):
        model.zero_grad()
        x.grad = None
        out = forward(x)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weights).sum().backward()
        return [out.detach(), x.grad.clone()] + [p.grad.clone() for p in model.parameters()]

    fast, ref = grads(lambda x: model(x)[0]), grads(lambda x: dense_reference(model, x))
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (a - b).abs().max()
    assert (fast[1][:60 - 2 * max(k_trunc, 1)] != 0).any(), "gradient reaches the distant past"


def test_sparse_replay_keeps_lstm_sized_memory():
    """Saved-for-backward memory grows like an LSTM's, not with T^2 (the dense graph's)."""
    def saved_mib(model, T):  # measured as the benchmark does: saved tensors, once per storage
        x = torch.randn(T, 8, 4)
        return tasks.benchmark(lambda: model(x)[0].sum().backward(), torch.device("cpu"),
                               repeats=1)[1]

    torch.manual_seed(0)
    sparse = sab.SAB(4, 32, k_top=5, k_att=2, k_trunc=5)
    dense = sab.SAB(4, 32, k_top=5, k_att=2, k_trunc=5, attention="dense")
    lstm = torch.nn.LSTM(4, 32)
    sparse_400 = saved_mib(sparse, 400)
    ratio = sparse_400 / saved_mib(sparse, 100)
    assert ratio < 4.5, f"sparse SAB's saved memory grew {ratio:.1f}x for 4x T"
    assert sparse_400 < 1.5 * saved_mib(lstm, 400)
    assert saved_mib(dense, 400) / saved_mib(dense, 100) > 8  # the dense graph: O(T^2)


def test_model_classes_work_when_copied_out_under_the_standard_imports():
    import inspect
    namespace = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional,
                 "checkpoint": torch.utils.checkpoint.checkpoint}
    for obj in (sab.sparsify, sab.top_weights, sab.SAB, sab.MemoryBank, sab._Write,
                sab._SparseRead):
        exec(inspect.getsource(obj), namespace)
    torch.manual_seed(0)
    model = namespace["SAB"](10, 32, k_top=3, k_att=2, k_trunc=4)
    head = torch.nn.Linear(32, 9)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(5):
        x, y = tasks.copy_batch(16, 40, g)  # (60, 16): T = 60 steps, 30 memories
        out, _ = model(torch.nn.functional.one_hot(x, 10).float())
        loss = torch.nn.functional.cross_entropy(head(out).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(l) for l in losses) and losses[-1] < losses[0]
    assert model.key.weight.grad.abs().sum() > 0, "attention parameters get gradient"


def test_a_run_writes_a_csv_log_of_every_step_and_the_attention_figure(tmp_path):
    import csv
    rec = _run(tmp_path, "--steps", "10", "--clip", "0.5")
    with open(tmp_path / rec["csv_log"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    for key in ("seconds", "loss", "grad_norm", "lr", "valid_acc", "valid_ce"):
        assert key in rows[0], key
    evaluated = [int(r["step"]) for r in rows if r["valid_acc"]]
    assert evaluated == [5, 10]  # --eval-every 5
    assert float(rows[9]["valid_acc"]) == rec["history"][-1]["valid_acc"]
    assert all(float(r["grad_norm"]) > 0 and math.isfinite(float(r["loss"])) for r in rows)
    png = tmp_path / rec["attention_figure"]
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_attention_figure_shows_the_memories_each_step_reads(tmp_path):
    """Reads set by hand (step t reads memory t - 2 with weight 1, and memory 0 with 0.5 from
    step 4 on): the figure is dark exactly there and half-dark there; an untrained SAB with
    min_age 3 shows no read of a memory younger than 3 steps."""
    from PIL import Image
    import torchvision.transforms.functional as TF
    scale = 4
    task = tasks.make_task("copy", 4, 3, str(tmp_path), 0, eval_size=3)
    net = sab.Net(task.n_in, task.n_out, 8, per_step=True, k_top=2, k_att=1, k_trunc=2)
    length = len(next(task.eval_batches("test", limit=1))[0])

    def by_hand(x):  # instead of the network: the reads a model with set scores would make
        for t in range(2, len(x)):
            index = torch.tensor([[t - 2, 0 if t >= 4 else t - 1]] * x.shape[1])
            w = torch.tensor([[1.0, 0.5 if t >= 4 else 0.0]] * x.shape[1])
            net.rnn.watch(t, w, index, t)
        return torch.zeros(len(x), x.shape[1], task.n_out)

    class HandSet(torch.nn.Module):
        rnn = net.rnn

        def forward(self, x):
            return by_hand(x)
    path = sab.attention_figure(HandSet(), task, torch.device("cpu"), tmp_path / "a.png",
                                samples=2, scale=scale)  # two panels: padded by `scale`
    image = TF.to_tensor(Image.open(path).convert("RGB"))  # (3, H, W) in [0, 1]
    dark = image[0, scale::scale, scale::scale][:length, :length] < 0.5  # (memory, step)
    half = (image[0, scale::scale, scale::scale][:length, :length] - 0.5).abs() < 0.05
    expected = torch.zeros(length, length, dtype=torch.bool)
    for t in range(2, length):
        expected[t - 2, t] = True
    assert torch.equal(dark, expected)
    assert torch.equal(half[0, 4:], torch.ones(length - 4, dtype=torch.bool))
    # a real (untrained) SAB that may read only memories at least 3 steps old
    real = sab.Net(task.n_in, task.n_out, 8, per_step=True, k_top=2, k_att=1, k_trunc=2,
                   min_age=3)
    path = sab.attention_figure(real, task, torch.device("cpu"), tmp_path / "b.png", samples=2,
                                scale=scale)
    image = TF.to_tensor(Image.open(path).convert("RGB"))
    read = image[0, scale::scale, scale::scale][:length, :length] < 0.99
    assert read.any()
    memory, step = read.nonzero().unbind(1)
    assert (step - memory >= 3).all()


def test_the_attention_figure_of_a_long_sequence_is_max_pooled_to_a_bounded_width(tmp_path):
    """Step t reads memory t - 2 (weight 1): past max_steps the figure shows blocks of p x p
    cells, dark where any read in the block is, and is ceil(T / p) cells wide."""
    from PIL import Image
    import torchvision.transforms.functional as TF
    scale, max_steps = 2, 8
    task = tasks.make_task("copy", 20, 3, str(tmp_path), 0, eval_size=3)
    net = sab.Net(task.n_in, task.n_out, 8, per_step=True, k_top=2, k_att=1, k_trunc=2)
    length = len(next(task.eval_batches("test", limit=1))[0])  # 40 steps, 40 memories

    class HandSet(torch.nn.Module):
        rnn = net.rnn

        def forward(self, x):
            for t in range(2, len(x)):
                self.rnn.watch(t, torch.ones(x.shape[1], 1), torch.full((x.shape[1], 1), t - 2), t)
            return torch.zeros(len(x), x.shape[1], task.n_out)
    path = sab.attention_figure(HandSet(), task, torch.device("cpu"), tmp_path / "a.png",
                                samples=2, scale=scale, max_steps=max_steps)
    image = TF.to_tensor(Image.open(path).convert("RGB"))  # (3, H, W): 2 panels padded by scale
    pool = -(-length // max_steps)
    cells = -(-length // pool)
    assert image.shape[1:] == ((2 * cells + 3) * scale, (cells + 2) * scale)
    reads = torch.zeros(1, length, length)
    for t in range(2, length):
        reads[0, t - 2, t] = 1
    expected = torch.nn.functional.max_pool2d(reads, pool, ceil_mode=True)[0] > 0
    assert torch.equal(image[0, scale::scale, scale::scale][:cells, :cells] < 0.5, expected)


def test_load_rebuilds_the_trained_network_from_its_best_checkpoint(tmp_path):
    _run(tmp_path, "--steps", "5", "--h0-memory", "--head", "h+read")
    net = sab.load(tmp_path / "ckpt" / "sab-copy-sab-T4-best.pt")
    task = tasks.make_task("copy", 4, 64, str(tmp_path), 0)
    x, y = next(task.eval_batches("test", limit=64))
    with torch.no_grad():
        acc = (net(x)[-10:].argmax(2) == y[-10:]).float().mean().item() * 100
    first = next(task.eval_batches("test", limit=64))
    assert net.rnn.h0_memory and net.head_reads == "h+read" and not net.training
    assert torch.equal(first[0], x)
    assert acc == pytest.approx(sab.evaluate(net, task, "test", torch.device("cpu"), None,
                                             limit=64)["test_acc"])
    with pytest.raises(ValueError, match="not a checkpoint of sab.py"):
        torch.save({"x": 1}, tmp_path / "foreign.pt")
        sab.load(tmp_path / "foreign.pt")


def test_history_records_the_training_diagnostics(tmp_path):
    rec = _run(tmp_path, "--steps", "10", "--clip", "0.5", "--lr-schedule", "cosine")
    h = rec["history"][-1]
    for key in ("max_abs_h", "att_recent", "att_entropy", "grad_norm", "grad_norm_max",
                "clipped", "lr"):
        assert key in h, key
    assert 0 <= h["att_recent"] <= 1 and 0 <= h["att_entropy"] <= math.log(2) + 1e-6  # k_top 2
    assert 0 <= h["clipped"] <= 1 and h["grad_norm_max"] >= h["grad_norm"] > 0
    assert h["lr"] < rec["history"][0]["lr"]  # cosine decay
    assert rec["history"][0]["max_abs_h"] > 0


def test_cosine_schedule_ends_near_zero():
    args = sab.parse_args(["--lr-schedule", "cosine", "--lr", "1e-3", "--steps", "100"])
    assert sab.learning_rate(args, 0) == pytest.approx(1e-3)
    assert sab.learning_rate(args, 50) == pytest.approx(5e-4)
    assert sab.learning_rate(args, 99) < 1e-6


def test_a_forward_and_backward_leave_no_memory_bank_alive():
    # A bank that held its token would form a cycle through the autograd graph that Python's
    # garbage collector cannot see, and every training step's graph would stay in memory.
    import gc
    model = sab.SAB(3, 8, k_top=2, k_att=2, k_trunc=3)
    for _ in range(3):
        model(torch.randn(20, 2, 3))[0].sum().backward()
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is sab.MemoryBank]


def test_the_default_run_name_tells_configurations_apart():
    tag = lambda argv: sab.parse_args(argv.split()).tag
    assert tag("--task copy --quick") == "T10-quick" and tag("--task copy") == "T100"
    assert tag("--task copy --seq-len 200") == "T200"              # T is in the name already
    assert tag("--task copy --quick --steps 10 --threads 2") == "T10-quick"  # how long, where
    assert tag("--task copy --quick --seed 3") == "T10-quick-s3"
    lr, clip = tag("--task copy --quick --lr 2e-2"), tag("--task copy --quick --clip 1")
    assert re.fullmatch(r"T10-quick-[0-9a-f]{6}", lr) and lr != clip
    assert lr == tag("--task copy --quick --lr 0.02") and tag("--task copy --tag x") == "x"


def test_the_baselines_are_what_their_names_say():
    # lstm: no attention and full BPTT (it once kept k_top 5: SAB with full BPTT)
    tiny = sab.tasks.make_task("copy", 10, 4)
    for model, k_top, k_trunc, attends in (("lstm", 0, 0, False), ("tbptt", 0, 5, False),
                                           ("attn", 5, 0, True), ("sab", 5, 5, True)):
        net = sab.build_model(sab.parse_args(["--task", "copy", "--model", model]), tiny).rnn
        assert (net.k_top, net.k_trunc, net.attends) == (k_top, k_trunc, attends), model


def test_text8_download_is_unzipped_and_checked(tmp_path, monkeypatch):
    import hashlib
    import zipfile
    import torchvision.datasets.utils
    content = b"anarchism originated as a term of abuse"

    def fake_download(url, root, filename=None, md5=None, **kw):  # the network: a zip of text8
        assert url == sab.TEXT8_URL
        os.makedirs(root, exist_ok=True)
        with zipfile.ZipFile(os.path.join(root, filename or os.path.basename(url)), "w") as z:
            z.writestr("text8", content)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download)
    monkeypatch.setattr(sab, "TEXT8_SHA256", hashlib.sha256(content).hexdigest())
    assert sab.load_text8(str(tmp_path))["train"] == content.decode()
    monkeypatch.setattr(sab, "TEXT8_SHA256", "0" * 64)
    with pytest.raises(tasks.DataError, match="checksum"):
        sab.load_text8(str(tmp_path))


def test_grad_flow_with_k_trunc_1_reaches_earlier_steps_only_through_the_attended_memories():
    """k_trunc = 1: the LSTM passes no gradient from one step to the next, so with the loss on
    the last step alone the gradient reaches an earlier h(t) only through attention (section
    3): the memories the last step attends to, and those that their steps attended to (a memory
    is h(t) = h^(t) + its own read)."""
    torch.manual_seed(0)
    T, k_att = 30, 2
    net = sab.Net(10, 10, 16, per_step=True, k_top=2, k_att=k_att, k_trunc=1)
    read = {}
    net.rnn.watch = lambda t, w, index, n: read.update({t: set(index.flatten().tolist())})
    x = torch.randint(0, 10, (T, 4))
    total, att = sab.grad_flow(net, x, lambda out: out[-1].sum())
    attended = {j * k_att + k_att - 1 for j in read[T - 1]}  # memory j is h(t) of this step t
    reached = {t for t in range(T - 1) if total[t] > 0}
    assert attended <= reached and all(t % k_att == k_att - 1 for t in reached)  # memories only
    for t in reached:  # and all of it through attention
        assert att[t] == pytest.approx(float(total[t]), rel=1e-6)
    assert net.rnn.probe is None


def test_grad_flow_of_the_baselines_stops_at_the_truncation_and_values_match_the_fused_path():
    torch.manual_seed(0)
    x = torch.randint(0, 10, (40, 3))
    for k_trunc in (0, 5):
        net = sab.Net(10, 10, 16, per_step=True, k_top=0, k_trunc=k_trunc)
        total, att = sab.grad_flow(net, x, lambda out: out[-1].sum())
        assert not att.any()
        reach = {t for t in range(40) if total[t] > 0}
        # the window of the last step: back to the truncation point t % k_trunc == 0 (35)
        assert reach == (set(range(35, 40)) if k_trunc else set(range(40)))


def test_grad_flow_command_measures_the_four_models(tmp_path, capsys):
    sab.main(["--task", "copy", "--grad-flow", "--seq-len", "20", "--out-dir", str(tmp_path)])
    rows = (tmp_path / "sab-copy-gradflow-T20.csv").read_text().splitlines()
    labels = {r.split(",")[0] for r in rows[1:]}
    assert labels == {"sab", "sab (attention)", "tbptt", "lstm", "attn", "attn (attention)"}
    assert len(rows) == 1 + 6 * 40  # copy T=20: 40 steps
    assert "| sab (attention) | " in capsys.readouterr().out
