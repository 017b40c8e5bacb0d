"""indrnn.py: the recurrence Function, independence, the constraint, shapes, learning, NTU, CLI."""
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import indrnn
import tasks
from conftest import ROOT, saved_weights


def _random_inputs(T=12, B=3, H=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(T, B, H, generator=g, dtype=torch.float64).requires_grad_()
    u = (torch.rand(H, generator=g, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    h0 = torch.rand(B, H, generator=g, dtype=torch.float64).requires_grad_()
    return pre, u, h0


def test_recurrence_function_matches_the_autograd_loop():
    pre, u, h0 = _random_inputs()
    upstream = torch.randn(pre.shape, dtype=torch.float64)
    grads = []
    for fn in (indrnn.indrnn_recurrence, indrnn.indrnn_recurrence_reference):
        h = fn(pre, u, h0)
        grads.append((h,) + torch.autograd.grad((h * upstream).sum(), (pre, u, h0)))
    (h_fast, *g_fast), (h_ref, *g_ref) = grads
    assert (h_ref == 0).any() and (h_ref > 0).any(), "the test needs active and inactive units"
    assert torch.allclose(h_fast, h_ref, atol=1e-12)
    for name, a, b in zip(("pre", "u", "h0"), g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-10), f"gradient of {name} differs"
    assert torch.autograd.gradcheck(indrnn.IndRNNRecurrence.apply, _random_inputs(T=6, H=3))


def test_recurrence_runs_in_float32_under_bfloat16():
    pre, u, h0 = (t.detach() for t in _random_inputs())
    h = indrnn.indrnn_recurrence(pre.bfloat16(), u.float(), h0.float())
    assert h.dtype == torch.float32
    with pytest.raises(ValueError, match="need pre"):
        indrnn.indrnn_recurrence(pre, u[:2], h0)


def test_units_are_independent_jacobian_is_diagonal():
    torch.manual_seed(0)
    layer = indrnn.IndRNN(4, 6).double()
    x = torch.randn(1, 1, 4, dtype=torch.float64)
    h_prev = torch.rand(1, 6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda h: layer(x, h)[1][0], h_prev)[:, 0]  # (6, 6)
    off_diagonal = jac - torch.diag(torch.diagonal(jac))
    assert (off_diagonal == 0).all()
    active = (layer(x, h_prev)[1][0] > 0).double()
    assert torch.allclose(torch.diagonal(jac), layer.u.detach() * active)


def test_initialisation_and_constraint_bounds():
    torch.manual_seed(0)
    T, mag = 100, 2.0
    net = indrnn.DeepIndRNN(2, 64, layers=3, seq_len=T, mag=mag, long_memory=True)
    cap = mag ** (1 / T)
    first, last = net.layers[0].u, net.layers[-1].u
    assert (first >= 0).all() and (first <= cap).all()
    assert (last >= 1 / cap).all() and (last <= cap).all(), "long-memory init of the last layer"
    with torch.no_grad():
        first.fill_(5.0)
        last.fill_(-5.0)
    net.constrain_()
    assert torch.allclose(first, torch.full_like(first, cap))
    assert torch.allclose(last, torch.full_like(last, -cap))


def test_shapes_and_h0_handling():
    torch.manual_seed(0)
    layer = indrnn.IndRNN(3, 7)
    x = torch.randn(10, 4, 3)
    out, h_n = layer(x)
    assert out.shape == (10, 4, 7) and h_n.shape == (4, 7)
    assert torch.equal(h_n, out[-1])
    first, h_mid = layer(x[:6])
    second, h_end = layer(x[6:], h_mid)  # carrying the state equals one call over all steps
    assert torch.allclose(torch.cat([first, second]), out) and torch.allclose(h_end, h_n)
    assert not torch.allclose(layer(x, torch.ones(4, 7))[0], out), "h0 is used"
    with pytest.raises(ValueError, match=r"\(T, B, 3\), got \(10, 4, 2\)"):
        layer(torch.randn(10, 4, 2))
    with pytest.raises(ValueError, match="h0 must be"):
        layer(x, torch.zeros(4, 6))
    with pytest.raises(ValueError, match="residual"):
        indrnn.DeepIndRNN(3, 7, layers=4, residual=True)


@pytest.mark.parametrize("batch_norm", ["time", None])
def test_the_residual_network_has_the_authors_layout(batch_norm):
    # the authors' code: x_0 = W_0 input; blocks x + [BN, rec, dropout, W, BN, rec, dropout,
    # W](x); then one more BN, rec. Written out here, layer by layer (dropout 0).
    torch.manual_seed(0)
    net = indrnn.DeepIndRNN(3, 8, layers=5, residual=True, batch_norm=batch_norm)
    x = torch.randn(6, 4, 3)
    L = net.layers

    def rec(j, pre):  # BN_j (if any) and recurrence j
        return L[j].recur(pre)[0]
    xb = L[0].input(x)
    for b in range(2):
        xb = xb + L[2 * b + 2].input(rec(2 * b + 1, L[2 * b + 1].input(rec(2 * b, xb))))
    assert torch.allclose(net(x)[0], rec(4, xb), atol=1e-6)  # (training mode: batch statistics)


@pytest.mark.parametrize("model", ["indrnn", "res-indrnn", "lstm", "irnn"])
def test_every_model_runs_and_carries_its_state(model):
    torch.manual_seed(0)
    kw = dict(batch_norm="frame", seq_len=8, dropout=0.2) if "indrnn" in model else {}
    net = indrnn.Net(model, 5, 5, 16, 3 if model == "res-indrnn" else 2, per_step=True, **kw)
    x = torch.randint(0, 5, (8, 4))
    logits, state = net(x)
    logits2, _ = net(x, indrnn.detach_state(state))
    assert logits.shape == (8, 4, 5) and not torch.allclose(logits, logits2)


def test_grad_checkpoint_gives_the_same_gradients_and_running_stats():
    x = torch.randn(16, 4, 3)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = indrnn.DeepIndRNN(3, 8, layers=5, residual=True, dropout=0.3, batch_norm="time",
                                seq_len=16, grad_checkpoint=ckpt)
        out, _ = net(x)
        out.square().sum().backward()
        results.append((out, [p.grad for p in net.parameters()],
                        [b for n, b in net.named_buffers() if "running" in n]))
    (o1, g1, b1), (o2, g2, b2) = results
    assert torch.allclose(o1, o2)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))
    assert all(torch.allclose(a, b) for a, b in zip(b1, b2)), "BN counts its batch once"


def _run(tmp_path, *extra, data_dir=None):
    argv = ["--out-dir", str(tmp_path), "--threads", "1", *extra]
    if data_dir:
        argv += ["--data-dir", data_dir]
    return indrnn.main(argv)


def test_constraint_holds_after_every_step(tmp_path):
    rec = _run(tmp_path, "--task", "adding", "--seq-len", "20", "--steps", "3", "--lr", "1.0",
               "--eval-every", "3", "--eval-size", "50")
    name = f"indrnn-adding-indrnn-{rec['config']['tag']}.pt"
    state = torch.load(tmp_path / "ckpt" / name, weights_only=False)["model"]
    cap = 2.0 ** (1 / 20)
    us = [v for k, v in state.items() if k.endswith(".u")]
    assert len(us) == 2 and all(u.abs().max() <= cap + 1e-6 for u in us)
    assert any(u.abs().max() > cap - 1e-3 for u in us), "lr 1.0 pushes u to the bound"


def test_short_adding_run_learns(tmp_path):
    rec = _run(tmp_path, "--task", "adding", "--seq-len", "30", "--steps", "500", "--lr", "2e-3",
               "--eval-every", "250", "--eval-size", "500")
    assert rec["metrics"]["test_mse"] < 0.167 / 4, rec["metrics"]


def test_resume_continues_exactly(tmp_path):
    common = ["--task", "adding", "--seq-len", "12", "--eval-every", "3", "--eval-size", "50",
              "--bn", "time", "--dropout", "0.2", "--layers", "3", "--model", "res-indrnn",
              "--tag", "T12"]
    straight = _run(tmp_path / "a", *common, "--steps", "6")
    _run(tmp_path / "b", *common, "--steps", "3")
    resumed = _run(tmp_path / "b", *common, "--steps", "6", "--resume")
    assert straight["metrics"] == resumed["metrics"]
    name = "indrnn-adding-res-indrnn-T12.pt"
    a, b = (saved_weights(tmp_path / run / "ckpt" / name) for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ptb_run_with_frame_wise_batch_norm(tmp_path, ptb_data_dir):
    rec = _run(tmp_path, "--task", "ptb", "--hidden-size", "16", "--layers", "2", "--steps", "2",
               "--eval-every", "2", "--eval-size", "2", "--batch-size", "4", data_dir=ptb_data_dir)
    assert 0 < rec["metrics"]["valid_bpc"] < 10 and rec["config"]["bn"] == "frame"
    # the test pass carries the state through the whole test set (100k steps at batch 4)
    assert math.isfinite(rec["metrics"]["test_bpc"]) and rec["config"]["mag"] == 1.0


def _skeleton_text(frames):
    """A .skeleton file in the official NTU RGB+D format. frames: list of {bodyID: (25, 3)}."""
    lines = [str(len(frames))]
    for frame in frames:
        lines.append(str(len(frame)))
        for body_id, joints in frame.items():
            lines.append(f"{body_id} 0 1 2 1 2 0 0.1 -0.2 2")
            lines.append("25")
            for x, y, z in joints:
                lines.append(f"{x} {y} {z} 250.1 200.2 1000.3 500.4 0.1 0.2 0.3 0.4 2")
    return "\n".join(lines) + "\n"


def test_ntu_parser_reads_the_official_format(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.rand(3, 25, 3, generator=g).round(decimals=4) for _ in range(3))
    frames = [{"72057594037931101": a[0]},
              {"72057594037931101": a[1], "72057594037931102": b[1]},
              {"72057594037931102": b[2], "72057594037931103": c[2]}]
    path = tmp_path / "S001C002P003R001A010.skeleton"
    path.write_text(_skeleton_text([{k: v.tolist() for k, v in f.items()} for f in frames]))
    x = indrnn.parse_skeleton(str(path))
    assert x.shape == (3, 150)
    x = x.view(3, 2, 25, 3)  # bodies ...101 and ...102 are kept (most frames), in that order
    assert torch.allclose(x[0, 0], a[0]) and (x[0, 1] == 0).all()
    assert torch.allclose(x[1, 0], a[1]) and torch.allclose(x[1, 1], b[1])
    assert (x[2, 0] == 0).all() and torch.allclose(x[2, 1], b[2])
    bad = tmp_path / "bad.skeleton"
    bad.write_text("2\n1\n72057594037931101 0 1 2 1 2 0 0.1 -0.2 2\n24\n")
    with pytest.raises(tasks.DataError, match="bad.skeleton"):
        indrnn.parse_skeleton(str(bad))


def test_ntu_task_splits_and_samples_frames(tmp_path):
    folder = tmp_path / "ntu" / "nturgb+d_skeletons"
    with pytest.raises(tasks.DataError, match="registration"):
        indrnn.make_task("ntu", data_dir=str(tmp_path))
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for subject in (1, 3):          # 1 trains in cross-subject, 3 tests
        for camera in (1, 2):       # 2 trains in cross-view, 1 tests
            for action in range(1, 21):
                n = 5 + action      # frames
                frames = [{"7": torch.rand(25, 3, generator=g).tolist()} for _ in range(n)]
                name = f"S001C{camera:03d}P{subject:03d}R001A{action:03d}.skeleton"
                (folder / name).write_text(_skeleton_text(frames))
    (folder / "S001C001P001R002A001.skeleton").write_text("0\n")  # a sample without skeletons
    cs = indrnn.make_task("ntu", batch_size=8, data_dir=str(tmp_path), ntu_protocol="cs")
    assert (tmp_path / "ntu" / "skeletons.pt").exists(), "parsed once, then cached"
    d = indrnn.load_ntu(str(tmp_path))
    assert (d["subject"][cs.index["test"]] == 3).all()
    assert (d["subject"][torch.cat([cs.index["train"], cs.index["valid"]])] == 1).all()
    cv = indrnn.make_task("ntu", batch_size=8, data_dir=str(tmp_path), ntu_protocol="cv")
    assert (d["camera"][cv.index["test"]] == 1).all()
    x, y = cs.train_batch(0)
    assert x.shape == (20, 8, 150) and y.shape == (8,) and y.max() < 60
    x2, _ = cs.train_batch(1)
    assert not torch.equal(x, x2)
    xs = [x for x, _ in cs.eval_batches("test")]
    assert sum(len(x[0]) for x in xs) == len(cs.index["test"])
    assert torch.equal(xs[0], next(iter(cs.eval_batches("test")))[0]), "evaluation is fixed"
    empty = d["names"].index("S001C001P001R002A001.skeleton")
    assert (cs._batch(torch.tensor([empty]))[0] == 0).all()


def test_make_task_builds_ntu_here_and_defers_the_rest_to_tasks():
    task = indrnn.make_task("adding", seq_len=7, batch_size=3, eval_size=6)
    x, y = task.train_batch(0)
    assert isinstance(task, tasks.SyntheticTask) and x.shape == (7, 3, 2) and y.shape == (3,)
    with pytest.raises(ValueError, match="unknown task"):
        indrnn.make_task("nonexistent")
    with pytest.raises(ValueError, match="'cs' or 'cv'"):
        indrnn.make_task("ntu", ntu_protocol="xs")


def test_stop_at_ends_training_and_steps_like_gives_a_baseline_as_many_steps(tmp_path, capsys):
    tiny = ["--task", "adding", "--seq-len", "10", "--hidden-size", "8", "--batch-size", "8",
            "--eval-size", "32", "--eval-every", "5", "--steps", "1000", "--tag", "fig2"]
    stopped = _run(tmp_path, *tiny, "--stop-at", "10")  # any MSE of sums in [0, 2] is below 10
    assert stopped["steps_done"] == 5 and len(stopped["history"]) == 1
    baseline = _run(tmp_path, *tiny, "--model", "lstm", "--steps-like", "indrnn")
    assert baseline["steps_done"] == 5 and baseline["config"]["steps"] == 5
    strict = _run(tmp_path, *tiny, "--tag", "strict", "--steps", "10", "--stop-at", "1e-9")
    assert strict["steps_done"] == 10  # not reached: the step count ends it
    with pytest.raises(SystemExit):  # no finished IndRNN run of that tag
        indrnn.parse_args([*tiny, "--tag", "other", "--model", "irnn", "--steps-like", "indrnn",
                           "--out-dir", str(tmp_path)])
    assert "--steps-like indrnn: no finished run" in capsys.readouterr().err
    path = tmp_path / "indrnn-adding-indrnn-fig2.json"  # a diverged IndRNN run sets no target
    path.write_text(json.dumps({**stopped, "diverged": "non-finite loss inf at step 5"}))
    with pytest.raises(SystemExit):
        indrnn.parse_args([*tiny, "--model", "irnn", "--steps-like", "indrnn", "--out-dir",
                           str(tmp_path)])
    assert "that run diverged (non-finite loss inf at step 5)" in capsys.readouterr().err


@pytest.mark.parametrize("quick", [[], ["--quick"]])
def test_every_task_and_model_has_a_valid_configuration(quick):
    for task in indrnn.TASKS:
        for model in indrnn.MODELS:
            args = indrnn.parse_args(["--task", task, "--model", model, *quick])
            assert args.layers >= 1 and args.lr > 0 and args.steps > 0


def test_cli_rejects_bad_input_with_a_clear_message(cli):
    code, err = cli("indrnn.py", "--model", "res-indrnn", "--layers", "4")
    assert code == 2 and "1 + 2 * blocks" in err
    code, err = cli("indrnn.py", "--task", "mnist", "--seq-len", "100")
    assert code == 2 and "fixed by the images" in err
    code, err = cli("indrnn.py", "--model", "lstm", "--grad-checkpoint")
    assert code == 2 and "--grad-checkpoint applies" in err
    code, err = cli("indrnn.py", "--task", "ntu", "--data-dir", "/nonexistent-dir", "--steps", "1")
    assert code == 1 and "registration" in err


def test_benchmark_prints_both_layers(capsys):
    indrnn.main(["--benchmark", "--seq-len", "30", "--batch-size", "4", "--hidden-size", "8",
                 "--threads", "1"])
    out = capsys.readouterr().out
    for row in ("| 8 | 30 | nn.LSTM |", "| 8 | 30 | IndRNN |", "| 2 | 30 | IndRNN, naive loop"):
        assert row in out


def test_the_quick_presets_resume_command_resumes_exactly_what_was_interrupted(tmp_path):
    """`--task adding --quick` is one run in one process (the LSTM baseline is the same command
    with --model lstm): Ctrl-C prints a command that, run as printed, ends where the
    uninterrupted run ends."""
    argv = ["--task", "adding", "--quick", "--seq-len", "20", "--hidden-size", "8", "--steps",
            "300", "--eval-every", "150", "--eval-size", "20", "--tag", "T20-quick"]
    full = indrnn.main(argv + ["--out-dir", str(tmp_path / "full")])
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "indrnn.py"), *argv, "--out-dir",
                             str(tmp_path / "cut"), "--checkpoint-minutes", "0.0001"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list((tmp_path / "cut").glob("ckpt/*T20-quick.pt")):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast)")
    assert proc.returncode == 130, err
    command = err.strip().splitlines()[-1].split("to continue: ", 1)[1].split()
    assert command[:2] == ["python", "indrnn.py"] and command[-1] == "--resume"
    r = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "cut" / "indrnn-adding-indrnn-T20-quick.json") as f:
        assert json.load(f)["metrics"] == full["metrics"]


# What each model class needs besides the four standard imports (its docstring lists the same).
COPY_WITH = {
    "IndRNN": ["IndRNNRecurrence", "indrnn_recurrence", "SeqBatchNorm"],
    "DeepIndRNN": ["IndRNN", "IndRNNRecurrence", "indrnn_recurrence", "SeqBatchNorm",
                   "shared_dropout", "_FrozenRunningStats"],
}
COPY_CONFIGS = {  # every code path of the copied code: both batch norms, dropout, checkpointing
    "IndRNN": [dict(seq_len=6, batch_norm="frame", long_memory=True),
               dict(batch_norm="time", input_std=0.1), dict()],
    "DeepIndRNN": [dict(layers=3, batch_norm="frame", seq_len=6, dropout=0.3),
                   dict(layers=5, residual=True, dropout=0.3, grad_checkpoint=True),
                   dict(layers=2, batch_norm=None, long_memory=True, grad_checkpoint=True)],
}


def _forward_backward(cls, config):
    """Builds cls(3, 8, **config) under seed 0, runs forward and backward on a fixed (6, 4, 3)
    input and returns the output, the last states and the parameter gradients."""
    torch.manual_seed(0)
    model = cls(3, 8, **config)
    x = torch.randn(6, 4, 3)
    out, state = model(x)
    out.square().sum().backward()
    model.constrain_()
    return [out, state if torch.is_tensor(state) else torch.stack(state),
            *[p.grad for p in model.parameters()]]


@pytest.mark.parametrize("name", ["IndRNN", "DeepIndRNN"])
def test_model_classes_work_when_copied_out_under_the_standard_imports(name):
    cls = getattr(indrnn, name)
    listed = re.search(r"Copy with it: ([\w,\s]+)\.", cls.__doc__).group(1)
    assert sorted(listed.replace(",", " ").split()) == sorted(COPY_WITH[name])
    namespace = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional,
                 "checkpoint": torch.utils.checkpoint.checkpoint}
    for obj in [name] + COPY_WITH[name]:
        exec(inspect.getsource(getattr(indrnn, obj)), namespace)
    for config in COPY_CONFIGS[name]:
        copied = _forward_backward(namespace[name], config)
        original = _forward_backward(cls, config)
        assert all(torch.equal(a, b) for a, b in zip(copied, original)), config


def irnn_dtypes_under_autocast(device):
    """A small IRNN network under bfloat16 autocast on `device`: ([the dtype of its recurrence's
    output], the dtype of the network's output). Also used by test_cuda.py."""
    net = indrnn.Net("irnn", 2, 1, 16, 1, per_step=False).to(device)
    seen = []
    net.rnn.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    with torch.autocast(device, dtype=torch.bfloat16):
        out, _ = net(torch.rand(50, 4, 2, device=device))
    return seen, out.dtype


def test_irnn_recurrence_runs_in_float32_under_autocast():
    """The IRNN's W_hh = I runs in float32 under autocast (bfloat16 rounds 1 + small to 1)."""
    seen, out_dtype = irnn_dtypes_under_autocast("cpu")
    assert seen == [torch.float32] and out_dtype == torch.bfloat16  # the head still autocasts


# -- gradient flow (--grad-flow): the measurement against closed forms ----------------------------

def _linear_indrnn(T, u, dtype):
    """One IndRNN layer in its linear regime: W = 0, bias 1, so every pre-activation is >= 1
    and relu' = 1; then dL/dh_(T-d) = u^d dL/dh_T per unit (CVPR section 3.1)."""
    net = indrnn.Net("indrnn", 2, 1, 4, 1, per_step=False, batch_norm=None, seq_len=T).to(dtype)
    with torch.no_grad():
        layer = net.rnn.layers[0]
        layer.input.weight.zero_()
        layer.input.bias.fill_(1.0)
        layer.u.fill_(u)
    return net, torch.randn(T, 3, 2, dtype=dtype)


def test_grad_flow_of_indrnn_in_the_linear_regime_is_u_to_the_distance():
    T = 1001  # distance 1000 is the first step
    net, x = _linear_indrnn(T, 1.0, torch.float32)
    norms = indrnn.grad_flow(net, x, lambda out: out.sum())
    assert norms[-1] > 0 and norms[T - 1 - 1000] / norms[-1] == pytest.approx(1.0, rel=1e-6)
    net, x = _linear_indrnn(T, 0.9, torch.float64)
    norms = indrnn.grad_flow(net, x, lambda out: out.sum())
    ratio = (norms / norms[-1]).tolist()
    assert ratio[T - 1 - 1000] == pytest.approx(0.9 ** 1000, rel=1e-3)
    assert ratio[T - 1 - 10] == pytest.approx(0.9 ** 10, rel=1e-12)


def test_grad_flow_measures_every_model_and_leaves_the_weights_unchanged():
    torch.manual_seed(0)
    x, y = torch.rand(30, 4, 2), torch.rand(4)
    for model in indrnn.GRAD_FLOW_MODELS:
        net = indrnn.Net(model, 2, 1, 8, 2, per_step=False)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        norms = indrnn.grad_flow(net, x, lambda out: ((out.squeeze(1) - y) ** 2).mean())
        assert norms.shape == (30,) and bool((norms[-5:] > 0).all()), model
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        assert net.training  # restored


def test_the_linear_recurrence_gradient_is_the_radius_to_the_distance():
    d = torch.arange(1001, dtype=torch.float64)
    for radius in (0.9, 1.0, 1.1):
        ratio = indrnn.linear_recurrence_gradient(radius, 1000)
        assert torch.allclose(ratio, radius ** d, rtol=1e-9, atol=0)


def test_single_unit_gradient_matches_forward_mode_and_clipping_bounds_the_cliff_step():
    # the gradient of (h_50 - 0.7)^2 by autograd against forward-mode differentiation of the
    # recurrence h_t = w s(h_(t-1)) + b: dh_t/dw = s + w s' dh_(t-1)/dw, dh_t/db = 1 + w s' dh_(t-1)/db
    for w0, b0 in [(2.0, -1.0), (7.0, -3.5), (10.0, -5.2)]:
        p = torch.tensor([w0, b0], dtype=torch.float64, requires_grad=True)
        g, = torch.autograd.grad(indrnn.single_unit_loss(p[0], p[1]), p)
        h, dw, db = 0.5, 0.0, 0.0
        for _ in range(50):
            s = 1 / (1 + math.exp(-h))
            h, dw, db = w0 * s + b0, s + w0 * s * (1 - s) * dw, 1 + w0 * s * (1 - s) * db
        assert g.tolist() == pytest.approx([2 * (h - 0.7) * dw, 2 * (h - 0.7) * db], rel=1e-9)
    lr, clip = indrnn.CLIFF_LR, indrnn.CLIFF_CLIP
    free = indrnn.single_unit_descent(*indrnn.CLIFF_START, lr, indrnn.CLIFF_STEPS)
    clipped = indrnn.single_unit_descent(*indrnn.CLIFF_START, lr, indrnn.CLIFF_STEPS, clip)
    step = lambda path: max(math.dist(a[:2], b[:2]) for a, b in zip(path, path[1:]))
    assert step(clipped) <= lr * clip * (1 + 1e-9) < step(free) / 100  # the cliff's catapult
    assert clipped[-1][2] < clipped[0][2] < free[-1][2]  # clipped descends; unclipped is thrown up


def test_grad_flow_command_writes_every_curve_and_the_demonstrations(tmp_path, capsys):
    indrnn.main(["--task", "adding", "--grad-flow", "--seq-len", "30", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = (tmp_path / "indrnn-adding-gradflow-T30.csv").read_text().splitlines()
    assert rows[0] == "label,t,distance,grad_norm,relative" and len(rows) == 1 + 4 * 30
    assert {r.split(",")[0] for r in rows[1:]} == set(indrnn.GRAD_FLOW_MODELS)
    assert "| indrnn | " in out and "radius 1.1: d=10: 2.59" in out
    for name in ("spectral", "cliff-surface", "cliff-descent"):
        assert (tmp_path / f"indrnn-gradflow-{name}.csv").exists()
    # --eval-only: the best checkpoint of a trained run
    indrnn.main(["--task", "adding", "--seq-len", "30", "--steps", "2", "--eval-every", "1",
                 "--eval-size", "8", "--test-size", "8", "--tag", "run", "--out-dir", str(tmp_path)])
    indrnn.main(["--task", "adding", "--seq-len", "30", "--grad-flow", "--eval-only",
                 "--tag", "run", "--out-dir", str(tmp_path)])
    rows = (tmp_path / "indrnn-adding-gradflow-run-indrnn-best.csv").read_text().splitlines()
    assert len(rows) == 1 + 30 and rows[1].startswith("indrnn,1,29,")
