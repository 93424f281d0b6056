"""Suite-wide settings.

Small convolutions run far faster on one thread than on two oversubscribed ones (measured
10-15x on a loaded 2-core machine), and one thread makes results independent of the core count.
Tests that need another setting change it locally and restore it.
"""

import torch

torch.set_num_threads(1)
