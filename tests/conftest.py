"Shared pytest setup."
import pytest

from medsynth_nb.utils import num_threads


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    "Tests use tiny networks and tensors: one intra-op thread is many times faster than two on a shared 2-core CPU."
    with num_threads(1):
        yield
