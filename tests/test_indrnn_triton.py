"""indrnn.py: the fused Triton recurrence (IndRNNRecurrenceTriton), run on CPU tensors by
Triton's interpreter, its first-use check and fallback, and indrnn_recurrence's impl argument.

Triton reads TRITON_INTERPRET when a kernel is decorated (triton.knobs.runtime.interpret reads
the environment on every access), not when triton is imported, and indrnn.py decorates its
kernels lazily, once per mode: setting the variable per test with monkeypatch is enough, no
subprocess is needed. The kernel tests skip without triton; the validation tests need torch only.
"""
import importlib.util
import inspect
import warnings

import pytest
import torch

import indrnn


@pytest.fixture
def interpret(monkeypatch):
    """Triton's CPU interpreter on, and a fresh cache of first-use verdicts."""
    pytest.importorskip("triton", reason="triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(indrnn, "_TRITON_OK", {})
    assert indrnn._triton_interpret()


def _inputs(T, B, H, h0_zero=False, dtype=torch.float64, seed=0):
    """pre, u, h0 (leaves) and an upstream gradient; |u| <= 2^(1/T) for long T, as the
    constraint keeps it (CVPR section 3.1), so that values stay finite."""
    g = torch.Generator().manual_seed(seed)
    cap = 1.2 if T < 100 else 2.0 ** (1.0 / T)
    pre = torch.randn(T, B, H, generator=g, dtype=dtype)
    u = (torch.rand(H, generator=g, dtype=dtype) * 2 - 1) * cap
    h0 = torch.zeros(B, H, dtype=dtype) if h0_zero else torch.rand(B, H, generator=g, dtype=dtype)
    upstream = torch.randn(T, B, H, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (pre, u, h0)], upstream


def _value_and_grads(fn, leaves, upstream):
    h = fn(*leaves)
    return [h, *torch.autograd.grad((h * upstream).sum(), leaves)]


# (T, B, H, h0 zero): B*H = 1, 15, 201 (two programs of 128, the last partial), 145; T to 1000
CASES = [(1, 1, 1, False), (1, 3, 5, True), (2, 3, 5, False), (7, 3, 67, False),
         (33, 5, 29, True), (1000, 1, 3, False), (1000, 2, 3, True)]


@pytest.mark.parametrize("T, B, H, h0_zero", CASES)
def test_kernel_matches_the_reference_and_the_loop(interpret, T, B, H, h0_zero):
    leaves, upstream = _inputs(T, B, H, h0_zero)
    fast = _value_and_grads(lambda *a: indrnn.indrnn_recurrence(*a, impl="triton"), leaves,
                            upstream)
    ref = _value_and_grads(indrnn.indrnn_recurrence_reference, leaves, upstream)
    loop = _value_and_grads(lambda *a: indrnn.indrnn_recurrence(*a, impl="loop"), leaves,
                            upstream)
    if T * B * H >= 15:
        assert (ref[0] == 0).any() and (ref[0] > 0).any(), "needs active and inactive units"
    for name, a, b, c in zip(("h", "grad pre", "grad u", "grad h0"), fast, ref, loop):
        assert a.shape == b.shape and a.dtype == torch.float64
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), f"{name} differs from the reference"
        assert torch.allclose(a, c, rtol=1e-10, atol=1e-10), f"{name} differs from the loop"
    if h0_zero:
        assert torch.equal(fast[3], leaves[1].detach() * fast[1][0]), "grad h0 = u * d_0"
    assert indrnn._TRITON_OK == {("cpu", True): True}, "the first use ran the check and passed"


def test_kernel_in_float32_under_autocast_with_non_contiguous_inputs(interpret):
    (pre, u, h0), upstream = _inputs(64, 3, 67, dtype=torch.float32)
    pre_t = pre.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # strided
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = _value_and_grads(lambda *a: indrnn.indrnn_recurrence(*a, impl="triton"),
                                [pre_t, u, h0], upstream)
    ref = _value_and_grads(indrnn.indrnn_recurrence_reference,
                           [t.detach().double().requires_grad_() for t in (pre, u, h0)],
                           upstream.double())
    assert fast[0].dtype == torch.float32
    for name, a, b in zip(("h", "grad pre", "grad u", "grad h0"), fast, ref):
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-4), name


def test_kernel_gradcheck_and_sum_backward(interpret):
    leaves, _ = _inputs(3, 2, 2)
    assert torch.autograd.gradcheck(indrnn.IndRNNRecurrenceTriton.apply, leaves)
    h = indrnn.indrnn_recurrence(*leaves, impl="triton")
    h.sum().backward()  # an expanded (stride 0) upstream gradient
    grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    indrnn.indrnn_recurrence_reference(*leaves).sum().backward()
    assert all(torch.allclose(a, t.grad) for a, t in zip(grads, leaves))


def test_auto_is_the_loop_on_cpu_even_under_the_interpreter(interpret, monkeypatch):
    def fail(*args):
        raise AssertionError("auto must not run the kernel on CPU tensors")
    monkeypatch.setattr(indrnn.IndRNNRecurrenceTriton, "apply", fail)
    leaves, _ = _inputs(5, 2, 3)
    h = indrnn.indrnn_recurrence(*leaves)
    assert torch.allclose(h, indrnn.indrnn_recurrence_reference(*leaves))
    assert indrnn.recurrence_impl(torch.device("cpu")) == "loop" and indrnn._TRITON_OK == {}


def _loop_result(leaves, upstream):
    return _value_and_grads(lambda *a: indrnn.indrnn_recurrence(*a, impl="loop"), leaves,
                            upstream)


def test_a_kernel_that_fails_warns_once_and_falls_back_to_the_loop(interpret, monkeypatch):
    def broken_kernels():
        raise RuntimeError("PTX assembly failed\nsecond line of the compiler log")
    monkeypatch.setattr(indrnn, "_triton_kernels", broken_kernels)
    leaves, upstream = _inputs(6, 2, 3)
    with pytest.warns(RuntimeWarning) as record:
        got = _value_and_grads(lambda *a: indrnn.indrnn_recurrence(*a, impl="triton"), leaves,
                               upstream)
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message and "failed (RuntimeError: PTX assembly failed)" in message
    assert "using the loop" in message
    assert all(torch.equal(a, b) for a, b in zip(got, _loop_result(leaves, upstream)))
    assert indrnn._TRITON_OK == {("cpu", True): False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the verdict is cached: no second check, no warning
        indrnn.indrnn_recurrence(*leaves, impl="triton")


def test_a_kernel_that_disagrees_warns_and_falls_back_to_the_loop(interpret, monkeypatch):
    right = indrnn.IndRNNRecurrenceTriton

    class Wrong(right):  # the real kernels, then a wrong output
        @staticmethod
        def forward(ctx, pre, u, h0):
            return right.forward(ctx, pre, u, h0) * 1.01
    monkeypatch.setattr(indrnn, "IndRNNRecurrenceTriton", Wrong)
    leaves, upstream = _inputs(6, 2, 3)
    with pytest.warns(RuntimeWarning, match=r"disagrees with the loop \(h\) on cpu; using"):
        got = _value_and_grads(lambda *a: indrnn.indrnn_recurrence(*a, impl="triton"), leaves,
                               upstream)
    assert all(torch.equal(a, b) for a, b in zip(got, _loop_result(leaves, upstream)))


def test_impl_validation(monkeypatch):
    monkeypatch.setattr(indrnn, "_TRITON_OK", {})
    (pre, u, h0), _ = _inputs(4, 2, 3)
    with pytest.raises(ValueError, match="impl must be 'auto', 'loop' or 'triton', got 'cuda'"):
        indrnn.indrnn_recurrence(pre, u, h0, impl="cuda")
    with pytest.raises(ValueError, match="need pre"):
        indrnn.indrnn_recurrence(pre, u[:2], h0, impl="triton")
    if importlib.util.find_spec("triton") is not None:  # CPU tensors, interpreter off
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="under TRITON_INTERPRET=1; use impl='loop'"):
            indrnn.indrnn_recurrence(pre, u, h0, impl="triton")

    def no_triton():
        raise ImportError("No module named 'triton'")
    monkeypatch.setattr(indrnn, "_triton_interpret", no_triton)
    with pytest.raises(ValueError, match="needs the triton package"):
        indrnn.indrnn_recurrence(pre, u, h0, impl="triton")
    assert torch.equal(indrnn.indrnn_recurrence(pre, u, h0),
                       indrnn.indrnn_recurrence(pre, u, h0, impl="loop"))
    assert indrnn._use_triton(pre, forced=False) is False  # "auto": no triton, quietly the loop

    def broken_triton():
        raise RuntimeError("libtriton.so: undefined symbol")
    monkeypatch.setattr(indrnn, "_TRITON_OK", {})
    monkeypatch.setattr(indrnn, "_triton_interpret", broken_triton)
    with pytest.warns(RuntimeWarning, match=r"import triton failed \(RuntimeError\); using"):
        assert indrnn._use_triton(pre, forced=False) is False


def test_copied_out_recurrence_needs_torch_alone():
    """indrnn_recurrence copied without the Triton section: "auto" is the loop, "triton" says
    what is missing in one line."""
    namespace = {"torch": torch}
    for obj in ("IndRNNRecurrence", "indrnn_recurrence"):
        exec(inspect.getsource(getattr(indrnn, obj)), namespace)
    (pre, u, h0), _ = _inputs(4, 2, 3)
    assert torch.equal(namespace["indrnn_recurrence"](pre, u, h0),
                       indrnn.indrnn_recurrence(pre, u, h0, impl="loop"))
    with pytest.raises(ValueError, match="needs the Triton section"):
        namespace["indrnn_recurrence"](pre, u, h0, impl="triton")


def test_benchmark_says_which_recurrence_ran(capsys):
    indrnn.main(["--benchmark", "--seq-len", "5", "--batch-size", "2", "--hidden-size", "4",
                 "--threads", "1"])
    out = capsys.readouterr().out
    assert "IndRNN recurrence: loop (IndRNNRecurrence" in out and "| 4 | 5 | IndRNN |" in out


def test_the_first_use_check_inside_gradient_checkpointing(interpret):
    """The first-use check runs inside the first forward. Under torch.utils.checkpoint the
    recomputation does not run it again, so the check's tensors must not count among the
    forward's saved tensors (with --grad-checkpoint this failed on an H100: "a different number
    of tensors was saved during the original forward and recomputation")."""
    from torch.utils.checkpoint import checkpoint
    leaves, upstream = _inputs(5, 2, 3)
    h = checkpoint(lambda *a: indrnn.indrnn_recurrence(*a, impl="triton"), *leaves,
                   use_reentrant=False)
    grads = torch.autograd.grad((h * upstream).sum(), leaves)
    assert indrnn._TRITON_OK == {("cpu", True): True}, "the check passed and the kernel ran"
    ref = _value_and_grads(indrnn.indrnn_recurrence_reference, leaves, upstream)
    for a, b in zip([h, *grads], ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
