"""Suite-wide settings: one torch thread for every test, set in this one place.

Small convolutions run far faster on one thread than on two oversubscribed ones (measured
10-15x on a loaded 2-core machine), and one thread makes results independent of the core count.
Tests that need another setting change it locally and restore it.
"""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the whole session (restored at the end)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
