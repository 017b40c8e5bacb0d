"""Shared fixtures. Real data comes from $RNN_DATA_DIR (CI points it at a writable copy of
../shared/data); otherwise ./data, where the loaders download what is missing."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def data_dir():
    return os.environ.get("RNN_DATA_DIR", os.path.join(ROOT, "data"))
