"""Method registration by decorator and options declared once, by namespace, with defaults and types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from imgclust.errors import ImgclustError
from imgclust.methods import (
    METHODS,
    Assignment,
    ClusterModel,
    Derived,
    FitContext,
    FitResult,
    Option,
    OptionSet,
    available_methods,
    fit_input,
    fit_method,
    register_method,
    resolve_options,
    validate_options,
)
from imgclust.methods.options import options_from_dataclass, options_from_signature


def test_flat_keys_users_type_today_resolve_into_their_namespaces() -> None:
    opts = resolve_options("icbpl", {"n_views": 0, "epochs": 20, "n_restarts": 5, "trainable_blocks": 1,
                                     "amp": "bf16", "w_mmd": 2, "approximate_above": None})
    assert opts["input"]["n_views"] == 0 and opts["input"]["trainable_blocks"] == 1
    assert opts["train"]["epochs"] == 20 and opts["train"]["amp"] == "bf16"
    assert opts["fit"]["n_restarts"] == 5
    assert opts["method"]["w_mmd"] == 2.0 and isinstance(opts["method"]["w_mmd"], float)
    assert opts["method"]["approximate_above"] is None
    # defaults filled in, the method's own where it overrides the loop's
    assert opts["train"]["lr"] == 1e-3 and opts["train"]["batch_size"] == 256 and opts["method"]["w_min"] == 0.25
    assert opts.given == {"input.n_views", "train.epochs", "fit.n_restarts", "input.trainable_blocks", "train.amp",
                          "method.w_mmd", "method.approximate_above"}
    assert resolve_options("icbpl", {"train.epochs": 7})["train"]["epochs"] == 7


def test_unknown_keys_and_wrong_types_are_refused_naming_the_valid_keys() -> None:
    with pytest.raises(ImgclustError, match="unknown ICBPL option") as info:
        validate_options("icbpl", {"nosuch": 1})
    assert "train.epochs" in info.value.fix and "input.n_views" in info.value.fix
    with pytest.raises(ImgclustError, match="train.epochs must be int"):
        validate_options("icbpl", {"epochs": "20"})
    with pytest.raises(ImgclustError, match="must be bool"):
        validate_options("secu", {"normalize_inputs": 1})
    with pytest.raises(ImgclustError, match="given twice"):
        validate_options("icbpl", {"epochs": 3, "train.epochs": 4})
    with pytest.raises(ImgclustError, match="unknown k-means option"):
        validate_options("kmeans", {"epochs": 3})
    with pytest.raises(ImgclustError, match="unknown method"):
        validate_options("dbscan", {})
    validate_options("kmeans", {"n_init": 2, "approximate_above": None, "backend": "sklearn"})


def test_derived_defaults_follow_other_options() -> None:
    scratch = resolve_options("secu", {"encoder": "resnet18_cifar"})
    assert scratch["train"]["epochs"] == 401 and scratch["method"]["encoder_lr_scale"] == 1.0
    head = resolve_options("secu", {})
    assert head["train"]["epochs"] == 100 and head["method"]["encoder_lr_scale"] == 0.1
    assert resolve_options("secu", {"encoder_lr_scale": 0.5})["method"]["encoder_lr_scale"] == 0.5
    assert fit_input("secu", {"encoder": "resnet18_stl"}) == "pixels-96"
    assert fit_input("secu", {"input.encoder": "resnet18_cifar", "image_size": 16}) == "pixels-16"
    assert fit_input("icbpl", {}) == "backbone"


def test_an_ambiguous_flat_name_asks_for_its_namespace() -> None:
    options = OptionSet("toy", [Option("train", "lr", 0.1, float), Option("method", "lr", 0.2, float),
                                Option("method", "k2", Derived(lambda v: 2 * v["method"]["lr"]), float)])
    with pytest.raises(ImgclustError, match="ambiguous"):
        options.resolve({"lr": 1.0})
    resolved = options.resolve({"method.lr": 1.5})
    assert resolved["train"]["lr"] == 0.1 and resolved["method"]["k2"] == 3.0


class _ConstantModel(ClusterModel):
    method = "toy-constant"

    def assign(self, inputs: np.ndarray, device: torch.device | str = "cpu") -> Assignment:
        n = len(inputs)
        return Assignment(np.zeros(n, np.int64), np.ones(n, np.float32), np.zeros(n, np.float32))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "_ConstantModel":
        return cls()


def test_a_method_registers_itself_with_a_decorator() -> None:
    options = OptionSet("toy", [Option("method", "label", 0, int, "the one label")])
    try:
        @register_method("toy-constant", model=_ConstantModel, options=options, summary="everything in one cluster")
        def fit_constant(context: FitContext) -> FitResult:
            label = options.resolve(context.options)["method"]["label"]
            model = _ConstantModel()
            assignment = model.assign(context.features)
            assignment.labels[:] = label
            return FitResult(model, assignment)

        assert "toy-constant" in available_methods() and METHODS["toy-constant"].fit is fit_constant
        result = fit_method("toy-constant", FitContext(features=np.zeros((4, 2), np.float32), n_clusters=2,
                                                       options={"label": 1}))
        assert result.assignment.labels.tolist() == [1, 1, 1, 1]
        with pytest.raises(ImgclustError, match="unknown toy option"):
            validate_options("toy-constant", {"lable": 1})
        with pytest.raises(ValueError, match="registered twice"):
            register_method("toy-constant", model=_ConstantModel, summary="again")(lambda context: result)
    finally:
        METHODS.pop("toy-constant", None)


def test_options_take_their_help_from_the_docstring_they_are_declared_with() -> None:
    def fit(features: Any, n_clusters: int, n_init: int = 10, threshold: float = 0.7, plain: int = 1) -> None:
        """Fit.

        Args:
            features: rows.
            n_init: runs of ``kmeans`` (see :func:`imgclust.methods.kmeans.kmeans`); the best is
                kept. Later sentences are left to the docs.
            threshold (float): below this, e.g. 0.5, switch.
        """

    options = {o.name: o.help for o in options_from_signature("method", fit, exclude=("features", "n_clusters"))}
    assert options == {"n_init": "runs of kmeans (see imgclust.methods.kmeans.kmeans); the best is kept",
                       "threshold": "below this, e.g. 0.5, switch", "plain": ""}

    @dataclass
    class Config:
        """Settings.

        Attributes:
            lr: learning rate.
            w_a, w_b: loss weights.
        """

        lr: float = 0.1
        w_a: float = 1.0
        w_b: float = 2.0
        steps: int = 3

    assert {o.name: o.help for o in options_from_dataclass("method", Config)} == {
        "lr": "learning rate", "w_a": "loss weights", "w_b": "loss weights", "steps": ""}
