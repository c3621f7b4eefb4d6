"""Clustering methods by name. Each entry pairs a fit function with the :class:`ClusterModel` it returns.

To add a method, register it in :data:`METHODS`::

    METHODS["icbpl"] = Method(fit=fit_icbpl, model=ICBPLModel, summary="...")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ImgclustError
from .base import ClusterModel, FitContext, FitResult
from .kmeans import KMeansModel, fit_kmeans


@dataclass(frozen=True)
class Method:
    """One registered clustering method.

    Attributes:
        fit: fits on a :class:`FitContext` and returns a :class:`FitResult`.
        model: the :class:`ClusterModel` subclass ``fit`` returns; ``model.from_state`` reloads a saved one.
        summary: one line for ``imgclust methods``.
        fit_input: what ``fit`` needs in ``FitContext.features`` for given options: ``"backbone"`` (clean
            backbone features, the default) or ``"pixels-S"`` (the decoded images, uint8 (N, 3, S, S), for
            models trained from scratch, so that no backbone pass is spent on them).
    """

    fit: Callable[[FitContext], FitResult]
    model: type[ClusterModel]
    summary: str
    fit_input: Callable[[dict[str, Any]], str] = lambda options: "backbone"


METHODS: dict[str, Method] = {
    "kmeans": Method(fit=fit_kmeans, model=KMeansModel,
                     summary="spherical k-means on L2-normalised backbone features (the baseline)"),
}

from .icbpl import ICBPLModel, fit_icbpl  # noqa: E402

METHODS["icbpl"] = Method(fit=fit_icbpl, model=ICBPLModel, summary="ICBPL: latents pulled to fixed PEDCC centroids")

from .secu import SeCuClusterModel, fit_secu, secu_fit_input  # noqa: E402

METHODS["secu"] = Method(fit=fit_secu, model=SeCuClusterModel, fit_input=secu_fit_input,
                         summary="SeCu: stable cluster discrimination with multiple heads and size/entropy constraints")


def available_methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name``; ImgclustError listing the choices if there is none."""
    try:
        return METHODS[name]
    except KeyError:
        raise ImgclustError(f"unknown method {name!r}.", fix=f"choose one of: {', '.join(METHODS)}.") from None


def fit_method(name: str, context: FitContext) -> FitResult:
    """Fit method ``name`` on ``context``."""
    return get_method(name).fit(context)


def fit_input(name: str, options: dict[str, Any]) -> str:
    """What method ``name`` fits on with ``options``: ``"backbone"`` or ``"pixels-S"`` (see :class:`Method`)."""
    return get_method(name).fit_input(options)


def model_class(name: str) -> type[ClusterModel]:
    """The :class:`ClusterModel` subclass of method ``name`` (to rebuild a saved model)."""
    return get_method(name).model


def load_model(name: str, tensors: dict[str, Any], config: dict[str, Any]) -> ClusterModel:
    """Rebuild a saved model of method ``name``: its own model class, or a consensus of several of them."""
    member = model_class(name)
    if "consensus" in config:
        from .consensus import ConsensusModel

        return ConsensusModel.from_state(tensors, config, member_from_state=member.from_state)
    return member.from_state(tensors, config)
