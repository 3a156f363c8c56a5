"""Dataset diagnostics: measurements of a dataset itself, independent of any method or run."""

from parse_dfl.diagnostics.pid import dataset_pid, default_clusters, pid_discrete, pid_estimate

__all__ = ["dataset_pid", "default_clusters", "pid_discrete", "pid_estimate"]
