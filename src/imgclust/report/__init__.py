"""Report stage: ``report.html``, a self-contained page of a run (written from memory by the run, or rebuilt
from a run folder by ``imgclust report``)."""

from .html import RunData, load_run, write_report

__all__ = ["RunData", "load_run", "write_report"]
