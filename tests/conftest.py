"""Shared pytest setup: markers, and the repository root on sys.path (tests import the package
from the checkout).  MPI cases run as subprocesses through ``tests/mpi_helper.py``."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "mpi: runs mpirun subprocesses (skipped without MPI)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
