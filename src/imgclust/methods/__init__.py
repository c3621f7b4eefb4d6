"""Clustering methods by name. Each method registers its fit function, model class and options with
:func:`~.registry.register_method` in its own module; importing that module here is the registration line::

    @register_method("icbpl", model=ICBPLModel, options=ICBPL_OPTIONS, summary="...")
    def fit_icbpl(context: FitContext) -> FitResult: ...
"""

from __future__ import annotations

from .base import Assignment, ClusterModel, FitContext, FitResult
from .options import Derived, Option, OptionSet, ResolvedOptions
from .registry import (
    DEFAULT_METHOD,
    METHODS,
    Method,
    available_methods,
    fit_input,
    fit_method,
    get_method,
    load_model,
    model_class,
    register_method,
    resolve_options,
    validate_options,
)

# One line per method, in the order `imgclust methods` lists them.
from . import kmeans  # noqa: E402,F401  (registers "kmeans")
from . import icbpl  # noqa: E402,F401  (registers "icbpl")
from . import secu  # noqa: E402,F401  (registers "secu")
from . import turtle  # noqa: E402,F401  (registers "turtle")
from . import umap_kmeans  # noqa: E402,F401  (registers "umap-kmeans")
from . import pacmap_kmeans  # noqa: E402,F401  (registers "pacmap-kmeans")
from . import umap_pacmap_kmeans  # noqa: E402,F401  (registers "umap-pacmap-kmeans", the default)
from . import auto  # noqa: E402,F401  (registers "auto": keeps the best candidate by the label-free score)

__all__ = [
    "Assignment",
    "ClusterModel",
    "FitContext",
    "FitResult",
    "Method",
    "METHODS",
    "DEFAULT_METHOD",
    "Option",
    "OptionSet",
    "Derived",
    "ResolvedOptions",
    "register_method",
    "available_methods",
    "get_method",
    "fit_method",
    "fit_input",
    "model_class",
    "load_model",
    "resolve_options",
    "validate_options",
]
