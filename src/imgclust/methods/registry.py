"""The method registry: each method registers its fit function with :func:`register_method`.

Adding a method is one module plus one import line in ``imgclust/methods/__init__.py``::

    MY_OPTIONS = OptionSet("mine", [Option("method", "steps", 100, int, "outer steps")])

    @register_method("mine", model=MyModel, options=MY_OPTIONS, summary="one line for `imgclust methods`")
    def fit_mine(context: FitContext) -> FitResult:
        opts = MY_OPTIONS.resolve(context.options)
        ...
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import ImgclustError
from .base import ClusterModel, FitContext, FitResult
from .consensus import ConsensusModel
from .options import OptionSet, ResolvedOptions

__all__ = ["Method", "METHODS", "register_method", "available_methods", "get_method", "fit_method", "fit_input",
           "model_class", "load_model", "validate_options", "resolve_options"]


def _backbone_input(options: ResolvedOptions) -> str:
    return "backbone"


@dataclass(frozen=True)
class Method:
    """One registered clustering method.

    Attributes:
        name: what ``--method`` says.
        fit: fits on a :class:`FitContext` and returns a :class:`FitResult`.
        model: the :class:`ClusterModel` subclass ``fit`` returns; ``model.from_state`` reloads a saved one.
        summary: one line for ``imgclust methods``.
        options: the declared options (:class:`~.options.OptionSet`); ``None``: the method takes none.
        fit_input: what ``fit`` needs in ``FitContext.features``, given the resolved options: ``"backbone"``
            (clean backbone features, the default) or ``"pixels-S"`` (the decoded images, uint8
            (N, 3, S, S), for models trained from scratch, so that no backbone pass is spent on them).
        requires: packages the method imports, as ``(module, pip name)`` pairs, checked by
            :func:`validate_options` so that a missing one stops the run before any extraction.
        whitening: how ``--whitening`` (:mod:`imgclust.features.whitening`) applies: ``"default"`` (``auto``
            whitens the features first: measured to help), ``"optional"`` (only with ``augment``: not measured, or
            not helping) or ``"never"`` (the method trains on augmented views of its own, which whitened features
            would not match: ``augment`` is refused).
        unwhitened: option values by qualified key (``"method.name"``) that replace the declared defaults when
            the features are not whitened (a default measured to help on whitened features and to lose on raw
            ones); options the user set win.
    """

    name: str
    fit: Callable[[FitContext], FitResult]
    model: type[ClusterModel]
    summary: str
    options: OptionSet | None = None
    fit_input: Callable[[ResolvedOptions], str] = _backbone_input
    requires: tuple[tuple[str, str], ...] = ()
    whitening: str = "default"
    unwhitened: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, options: Mapping[str, Any]) -> ResolvedOptions:
        """``options`` checked against the declared ones, every default filled in."""
        return (self.options or OptionSet(self.name, [])).resolve(options)

    def options_for(self, options: Mapping[str, Any], whitened: bool) -> dict[str, Any]:
        """The options to fit with: ``options``, plus :attr:`unwhitened`'s values for the ones not given when the
        features are not ``whitened``."""
        if whitened or not self.unwhitened:
            return dict(options)
        resolved = self.resolve(options)
        return {**{key: value for key, value in self.unwhitened.items() if key not in resolved.given}, **options}


METHODS: dict[str, Method] = {}
#: What `imgclust cluster`, `run_cluster` and `ImageClusterer` fit when no method is named: above k-means on all 20
#: development sets, and within 0.01 of it or above on every set of the quality table and on three held-out sets
#: (docs/methods/umap-pacmap-kmeans.md).
DEFAULT_METHOD = "umap-pacmap-kmeans"


def register_method(name: str, *, model: type[ClusterModel], summary: str, options: OptionSet | None = None,
                    fit_input: Callable[[ResolvedOptions], str] = _backbone_input,
                    requires: tuple[tuple[str, str], ...] = (), whitening: str = "default",
                    unwhitened: Mapping[str, Any] | None = None
                    ) -> Callable[[Callable[[FitContext], FitResult]], Callable[[FitContext], FitResult]]:
    """Decorator registering a fit function as method ``name`` (the function is returned unchanged)."""

    def register(fit: Callable[[FitContext], FitResult]) -> Callable[[FitContext], FitResult]:
        if name in METHODS and METHODS[name].fit is not fit:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = Method(name=name, fit=fit, model=model, summary=summary, options=options,
                               fit_input=fit_input, requires=requires, whitening=whitening,
                               unwhitened=dict(unwhitened or {}))
        return fit

    return register


def available_methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name``; ImgclustError listing the choices if there is none."""
    if not isinstance(name, str) or name not in METHODS:
        raise ImgclustError(f"unknown method {name!r}.", fix=f"choose one of: {', '.join(METHODS)}.")
    return METHODS[name]


def resolve_options(name: str, options: Mapping[str, Any]) -> ResolvedOptions:
    """Method ``name``'s options: ``options`` checked, defaults filled in, by namespace."""
    return get_method(name).resolve(options)


def validate_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ImgclustError (naming the valid keys) on an unknown method, option name or value type, or a missing
    package the method needs.

    Cheap: call it before any feature extraction.
    """
    resolve_options(name, options)
    for module, package in get_method(name).requires:
        if importlib.util.find_spec(module) is None:
            raise ImgclustError(f"--method {name} needs the {package} package, which is not installed.",
                                fix=f"pip install {package} (or choose another method: imgclust methods).")


def fit_method(name: str, context: FitContext) -> FitResult:
    """Fit method ``name`` on ``context``."""
    return get_method(name).fit(context)


def fit_input(name: str, options: Mapping[str, Any]) -> str:
    """What method ``name`` fits on with ``options``: ``"backbone"`` or ``"pixels-S"`` (see :class:`Method`)."""
    method = get_method(name)
    return method.fit_input(method.resolve(options))


def model_class(name: str) -> type[ClusterModel]:
    """The :class:`ClusterModel` subclass of method ``name`` (to rebuild a saved model)."""
    return get_method(name).model


def load_model(name: str, tensors: dict[str, Any], config: dict[str, Any]) -> ClusterModel:
    """Rebuild a saved model of method ``name``: its own model class, or a consensus of several of them."""
    member = model_class(name)
    if "consensus" in config:
        return ConsensusModel.from_state(tensors, config, member_from_state=member.from_state)
    return member.from_state(tensors, config)
