"""Adapters to the tools users already run: modAL query strategies and a MONAI handler.

Each adapter imports its framework lazily, so ``import rprselect.integrations`` needs only
torch and numpy; a missing framework raises an ImportError naming the extra to install.
"""

from .modal import find_module, rpr_batch_sampling, rpr_sampling
from .monai import RPRHandler, sliding_window_operator

__all__ = [
    # modAL (pip install 'rprselect[modal]')
    "rpr_sampling",
    "rpr_batch_sampling",
    "find_module",
    # MONAI (pip install 'rprselect[monai]')
    "RPRHandler",
    "sliding_window_operator",
]
