"""Exact retrieval metrics (streaming over query chunks), classification accuracy and plots.

`plots` is not imported here: it pulls in matplotlib, which metric-only callers do not need.
`model_eval` (one trained model on a dataset version) is not imported here either: it pulls
in the inference path, which metric-only callers (training validation) do not need.

May import: components.constants, and in `model_eval` only components.data (versions) and
components.inference. Must not import training, index, tracking or pipelines: training
imports the metrics from here.
"""

from components.evaluation.classification import classification_accuracy
from components.evaluation.retrieval import (
    NUM_QUERIES,
    NUM_QUERIES_WITHOUT_RELEVANT,
    PER_CLASS_AP,
    PR_PRECISION,
    PR_RECALL,
    RetrievalResult,
    evaluate_retrieval,
    retrieval_metrics,
)

__all__ = [
    "NUM_QUERIES",
    "NUM_QUERIES_WITHOUT_RELEVANT",
    "PER_CLASS_AP",
    "PR_PRECISION",
    "PR_RECALL",
    "RetrievalResult",
    "classification_accuracy",
    "evaluate_retrieval",
    "retrieval_metrics",
]
