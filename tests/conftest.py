"""Shared fixtures. Real data comes from $RNN_DATA_DIR (CI points it at a writable copy of an
offline MNIST and PTB folder); otherwise from ./data, and tests whose dataset is not there skip."""
import os
import subprocess
import sys

import pytest
import torch

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


def run_script(script, *args):
    """Runs `python <script> <args>` (a script of the repository) in a subprocess and returns the
    CompletedProcess, with stdout and stderr as text."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                          capture_output=True, text=True, timeout=120)


def saved_weights(path):
    """The model state dict of a checkpoint written by one of the scripts."""
    return torch.load(path, weights_only=False)["model"]
