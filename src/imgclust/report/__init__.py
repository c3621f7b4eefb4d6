"""Report stage: the files a run leaves in its output folder."""

from .outputs import write_assignments, write_run_outputs

__all__ = ["write_assignments", "write_run_outputs"]
