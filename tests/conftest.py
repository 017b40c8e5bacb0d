"""Shared fixtures. Real data comes from $RNN_DATA_DIR (CI points it at a writable copy of an
offline MNIST and PTB folder); otherwise ./data, where the loaders download what is missing."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def data_dir():
    return os.environ.get("RNN_DATA_DIR", os.path.join(ROOT, "data"))


def run_script(script, *args):
    """Runs `python <script> <args>` (a script of the repository) in a subprocess and returns the
    CompletedProcess, with stdout and stderr as text."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                          capture_output=True, text=True, timeout=120)


def saved_weights(path):
    """The model state dict of a checkpoint written by one of the scripts."""
    return torch.load(path, weights_only=False)["model"]
