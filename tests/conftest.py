"""Suite-wide test settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    # Tests run tiny batches on a shared 2-core machine: one torch thread is fastest, and it
    # keeps OpenMP from spinning against Ray's processes.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One real local Ray per test module (2 CPUs, like this machine), shut down after it.

    address="local": a fresh instance even when another Ray runs on this machine.
    """
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="keisei-tests")
    yield
    ray.shutdown()
