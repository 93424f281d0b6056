"""rprselect: choose what to annotate next from a truncated SVD of the whole CNN.

For a bias-free piecewise-linear CNN, F(x) = A[x] x. The Right Projection Ratio
RPR(x; k) = |V_k V_k^T x|^2 / |x|^2 measures how much of x the network's top-k right singular
vectors capture; samples with a low RPR lie near the nullspace and are proposed for labelling.
"""

from .acquisition import ACQUISITIONS, acquire
from .adjoint import AdjointCNN, UnsupportedLayerError, adjoint_cnn
from .linearize import (
    AdjointFallbackWarning,
    NotHomogeneousWarning,
    homogeneity_error,
    linearize,
    linearize_batch,
)
from .metrics import label_logits, lpr, rank_k_logits, rpr
from .operator import LinearOperator, check_adjoint
from .scoring import score
from .select import RPRSelector, Selection, select
from .settings import ScoreSettings
from .sliding import sliding_window_operator
from .solvers import NotConvergedWarning, SolverConfig, SVDResult, svd, svd_batch
from .table import ScoreTable

__version__ = "0.1.0"

__all__ = [
    # the operator A[x] and its adjoint
    "linearize",
    "linearize_batch",
    "adjoint_cnn",
    "check_adjoint",
    "sliding_window_operator",
    "homogeneity_error",
    "LinearOperator",
    "AdjointCNN",
    # truncated SVD
    "svd",
    "svd_batch",
    "SVDResult",
    "SolverConfig",
    # metrics (paper Eq. 8, 10, 13)
    "rpr",
    "lpr",
    "label_logits",
    "rank_k_logits",
    # scoring a pool and choosing what to label
    "score",
    "ScoreSettings",
    "ScoreTable",
    "select",
    "Selection",
    "acquire",
    "ACQUISITIONS",
    "RPRSelector",
    # errors and warnings
    "UnsupportedLayerError",
    "NotConvergedWarning",
    "NotHomogeneousWarning",
    "AdjointFallbackWarning",
]
