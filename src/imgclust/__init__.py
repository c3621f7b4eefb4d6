"""imgclust: deep image clustering — pretrained backbones, cached features, k-means, ICBPL, SeCu."""

from ._version import __version__

from .estimator import ImageClusterer  # noqa: E402
from .run import RunResult, run_cluster  # noqa: E402

__all__ = ["ImageClusterer", "RunResult", "run_cluster", "__version__"]
