"""--compile: every model kind of the three scripts compiles its training step as one graph
(torch.compile with fullgraph=True, so a graph break is an error; inductor's C++ kernels on CPU)
and trains as eager does: the same losses and weights, to float32 rounding, over several
optimizer steps. Small T: the graph unrolls the time loop, and its compile time grows with T."""
import importlib

import pytest
import torch

from conftest import saved_weights
from test_rlstm import TinyTask

COMMON = ["--steps", "4", "--eval-every", "2", "--eval-size", "8", "--batch-size", "4",
          "--hidden-size", "8"]
CASES = {  # script: (task flags, {model: its own flags})
    "sab.py": (["--task", "adding", "--seq-len", "3"],
               {"sab": ["--k-top", "1", "--k-trunc", "2"], "tbptt": ["--k-trunc", "2"],
                "lstm": [], "attn": ["--k-top", "1"]}),
    "indrnn.py": (["--task", "adding", "--seq-len", "3", "--bn", "time"],
                  {"indrnn": [], "res-indrnn": [], "lstm": [], "irnn": []}),
    "rlstm.py": (["--task", "mnist", "--seq-len", "784", "--embed-size", "4", "--ffn-size", "8",
                  "--aux-hidden", "8", "--aux-len", "2", "--bptt", "2", "--aux-bptt", "2"],
                 {"rlstm": ["--pretrain-epochs", "0", "--ss-max", "0.5"],
                  "plstm": ["--pretrain-epochs", "0"], "lstm": []}),
}


def rlstm_on_a_tiny_task(monkeypatch):
    """rlstm.py's MNIST has T = 784 steps; a tiny task of T = 4 keeps the unrolled graph small."""
    monkeypatch.setattr(importlib.import_module("rlstm"), "make_task",
                        lambda name, seq_len, batch_size, *a, **k: TinyTask(4, batch_size))


def compiled_equals_eager(script, model, folder, *extra):
    """Trains `model` of `script` on a small task twice, eager and --compile (torch.compile's
    fullgraph: a graph break fails), and checks that they give the same losses and weights."""
    main = importlib.import_module(script[:-3]).main
    args = CASES[script][0] + CASES[script][1][model] + COMMON + ["--model", model, "--tag", "t",
                                                                  *extra]
    runs = {}
    for mode in ("eager", "compiled"):
        torch._dynamo.reset()
        runs[mode] = main(args + ["--out-dir", str(folder / mode)]
                          + (["--compile"] if mode == "compiled" else []))
    eager, compiled = runs["eager"], runs["compiled"]
    assert [h["loss"] for h in compiled["history"]] == pytest.approx(
        [h["loss"] for h in eager["history"]], rel=1e-4)
    a, b = (saved_weights(folder / mode / "ckpt" / f"{script[:-3]}-{args[1]}-{model}-t.pt")
            for mode in ("eager", "compiled"))
    for name in a:
        if a[name].is_floating_point():
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    assert compiled["steps_done"] == eager["steps_done"] == 4


@pytest.fixture(autouse=True)
def same_random_numbers(monkeypatch):
    """Compiled code draws random numbers (r-LSTM's anchors and scheduled sampling) with torch's
    own generator, as eager code does, so that the two runs see the same ones. Scalar C++
    kernels (simdlen 1) compile faster than vectorised ones: the graph is the same."""
    import torch._inductor.config
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    monkeypatch.setattr(torch._inductor.config.cpp, "simdlen", 1)
    rlstm_on_a_tiny_task(monkeypatch)


@pytest.mark.parametrize("script,model", [(s, m) for s, (_, models) in CASES.items()
                                          for m in models])
def test_the_compiled_training_step_trains_as_eager_does(script, model, tmp_path):
    compiled_equals_eager(script, model, tmp_path)
