"""Index tests run faiss single-threaded: on a shared 2-core machine OpenMP's spinning threads
made small builds 10-30x slower in wall time, for no gain at these sizes."""

from __future__ import annotations

import faiss
import pytest


@pytest.fixture(autouse=True)
def single_threaded_faiss():
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)
