"""The columns of a run's per-round records, shared by the run engine and the results tables."""

METRIC_COLUMNS = ("accuracy", "macro_f1", "balanced_accuracy", "auroc")
RECORD_COLUMNS = (
    "round",
    "num_labeled",
    *METRIC_COLUMNS,
    "classes_seen",
    "train_seconds",
    "eval_seconds",
    "query_seconds",
    "peak_host_mb",
    "peak_device_mb",
    "model",
    "dataset",
    "strategy",
    "init",
    "seed",
)
