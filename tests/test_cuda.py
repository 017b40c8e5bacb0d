"""The CUDA paths that the CPU suite cannot reach: the fused Triton recurrence compiled for the
GPU against the loop, and the models under CUDA autocast (run_all.sh's GPU tier runs with --amp).
Skipped without a CUDA device (CI has none). The rest of the suite hides the GPU (see
conftest.py); on a GPU machine run `RNN_TEST_CUDA=1 python -m pytest tests/test_cuda.py`.
"""
import os
import subprocess
import sys

import pytest
import torch

import indrnn
import sab
from test_compile import compiled_equals_eager, rlstm_on_a_tiny_task
from test_indrnn import irnn_dtypes_under_autocast
from test_indrnn_triton import _value_and_grads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device and RNN_TEST_CUDA=1")


@pytest.mark.parametrize("T, B, H, h0_zero", [(1, 1, 1, False), (7, 3, 67, False),
                                              (1000, 2, 3, True), (256, 128, 512, False)])
def test_triton_kernel_matches_the_loop_on_cuda(T, B, H, h0_zero):
    pytest.importorskip("triton", reason="triton is not installed")
    assert indrnn.recurrence_impl(torch.device("cuda")) == "triton"  # the first-use check passed
    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(generator=g, device="cuda", dtype=torch.float64)
    cap = 1.2 if T < 100 else 2.0 ** (1.0 / T)  # |u| as the constraint keeps it
    pre, upstream = torch.randn(T, B, H, **kw), torch.randn(T, B, H, **kw)
    u = (torch.rand(H, **kw) * 2 - 1) * cap
    h0 = torch.zeros(B, H, device="cuda", dtype=torch.float64) if h0_zero else \
        torch.rand(B, H, **kw)
    pre, u, h0 = (t.requires_grad_() for t in (pre, u, h0))
    fast = _value_and_grads(lambda *a: indrnn.indrnn_recurrence(*a, impl="triton"),
                            [pre, u, h0], upstream)
    loop = _value_and_grads(lambda *a: indrnn.indrnn_recurrence(*a, impl="loop"),
                            [pre, u, h0], upstream)
    for name, a, b in zip(("h", "grad pre", "grad u", "grad h0"), fast, loop):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_sab_trains_under_bf16_autocast(attention):
    """bfloat16 scores with float32 softmax weights (fewer memories than k_top) once failed in
    scatter on CUDA only."""
    torch.manual_seed(0)
    model = sab.SAB(10, 32, k_top=3, k_att=2, k_trunc=5, attention=attention).cuda()
    x = torch.randn(60, 4, 10, device="cuda")
    ref = model(x)[0]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)[0]
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert (out.float() - ref).abs().max() < 0.1  # bfloat16 rounding, not another computation


def test_irnn_recurrence_runs_in_float32_under_autocast():
    seen, _ = irnn_dtypes_under_autocast("cuda")
    assert seen == [torch.float32]


def test_the_first_use_check_inside_gradient_checkpointing_on_cuda(monkeypatch):
    """With --grad-checkpoint the kernel's first use is inside a checkpointed forward."""
    pytest.importorskip("triton", reason="triton is not installed")
    monkeypatch.setattr(indrnn, "_TRITON_OK", {})
    net = indrnn.DeepIndRNN(2, 32, layers=2, seq_len=50, grad_checkpoint=True).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(torch.randn(50, 4, 2, device="cuda"))[0]
    out.float().sum().backward()
    assert list(indrnn._TRITON_OK.values()) == [True]  # checked once, and it passed


@pytest.mark.parametrize("script,model", [("sab.py", "sab"), ("sab.py", "tbptt"),
                                          ("rlstm.py", "rlstm"), ("indrnn.py", "indrnn")])
def test_the_compiled_training_step_trains_as_eager_does_on_cuda(script, model, tmp_path,
                                                                 monkeypatch):
    """--compile on CUDA: mode "reduce-overhead" (CUDA graphs), the same losses and weights."""
    import torch._inductor.config
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    rlstm_on_a_tiny_task(monkeypatch)
    compiled_equals_eager(script, model, tmp_path, "--device", "cuda")


def test_a_run_on_cuda_resumes(tmp_path):
    """The checkpoint's RNG state once failed to load on CUDA (torch.load's map_location had
    moved the CPU generator's state to the GPU)."""
    args = ["--task", "copy", "--seq-len", "4", "--hidden-size", "16", "--k-top", "2",
            "--k-trunc", "3", "--out-dir", str(tmp_path), "--eval-every", "5", "--tag", "T4",
            "--device", "cuda"]
    sab.main(args + ["--steps", "5"])
    assert sab.main(args + ["--steps", "10", "--resume"])["steps_done"] == 10


def test_a_model_too_large_for_the_gpu_is_a_one_line_error(tmp_path):
    """On CUDA the allocator says "Storage size calculation overflow" (once a traceback)."""
    argv = ["--task", "copy", "--hidden-size", str(10**9), "--device", "cuda", "--out-dir",
            str(tmp_path)]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sab.py"), *argv],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "error: the model does not fit in memory with --hidden-size 1000000000" in r.stderr
