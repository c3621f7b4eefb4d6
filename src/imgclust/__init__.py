"""imgclust: deep image clustering — pretrained backbones, cached features, k-means, ICBPL, SeCu."""

__version__ = "0.1.0"

from .estimator import ImageClusterer  # noqa: E402

__all__ = ["ImageClusterer", "__version__"]
