"""Diagnostics: measurements of a dataset itself (PID), and of a finished run's models
(what PARSE's slices carry; accuracy with a modality missing at test time)."""

from parse_dfl.diagnostics.missing import format_missing, missing_modality_accuracy
from parse_dfl.diagnostics.pid import (
    dataset_pid,
    default_clusters,
    format_pid,
    pid_discrete,
    pid_estimate,
)
from parse_dfl.diagnostics.probe import format_probe, probe_run

__all__ = [
    "dataset_pid",
    "default_clusters",
    "format_missing",
    "format_pid",
    "format_probe",
    "missing_modality_accuracy",
    "pid_discrete",
    "pid_estimate",
    "probe_run",
]
