"""Shared fixtures. Real data comes from $RNN_DATA_DIR (CI points it at a writable copy of an
offline MNIST and PTB folder); otherwise from ./data, and tests whose dataset is not there skip."""
import importlib
import os
import sys

import pytest

# The suite checks the paths CI runs, on CPU. A visible GPU would change what --device auto picks,
# and with it numbers that tests compare, so it is hidden (before torch starts CUDA) unless
# RNN_TEST_CUDA=1, for tests/test_cuda.py on a GPU machine.
if os.environ.get("RNN_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


DATASETS = {"MNIST": os.path.join("MNIST", "raw"), "ptb": "ptb"}


def _dataset_dir(name):
    """The data folder that holds dataset `name`. With $RNN_DATA_DIR set (CI sets it) that
    folder, whatever it holds: a missing dataset then fails its tests. Unset: ./data if it holds
    the dataset, else the test is skipped with the reason (offline machines; tests download
    nothing)."""
    if os.environ.get("RNN_DATA_DIR"):
        return os.environ["RNN_DATA_DIR"]
    local = os.path.join(ROOT, "data")
    folder = os.path.join(local, DATASETS[name])
    if os.path.isdir(folder) and os.listdir(folder):
        return local
    pytest.skip(f"no {name} data: ./data/{DATASETS[name]} is empty and RNN_DATA_DIR is unset "
                f"(set it to a folder holding {DATASETS[name]}/)")


@pytest.fixture(scope="session")
def mnist_data_dir():
    return _dataset_dir("MNIST")


@pytest.fixture(scope="session")
def ptb_data_dir():
    return _dataset_dir("ptb")


@pytest.fixture
def cli(capsys):
    """cli(script, *args) runs `python <script> <args>` in this process (no interpreter start-up,
    so a refusal test takes milliseconds) through the scripts' own entry point, tasks.run_main,
    and returns (exit status, stderr). For runs that are refused: a run that is not refused fails
    the test, and so does any exception other than SystemExit (it would be a traceback). Threads
    and the random state are restored afterwards."""
    import tasks

    def run(script, *args):
        module = importlib.import_module(script.removesuffix(".py"))
        threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
        try:
            with pytest.raises(SystemExit) as e:
                tasks.run_main(lambda: module.main(list(args)))
        finally:
            torch.set_num_threads(threads)
            torch.random.set_rng_state(rng)
        code, err = e.value.code, capsys.readouterr().err
        if isinstance(code, str):  # SystemExit("error: ...") prints its message and exits 1
            code, err = 1, err + code + "\n"
        assert "Traceback" not in err, err  # nothing printed one before exiting
        return code, err
    return run


def saved_weights(path):
    """The model state dict of a checkpoint written by one of the scripts."""
    return torch.load(path, weights_only=False)["model"]
