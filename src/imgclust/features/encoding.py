"""What a model consumes: backbone features, a backbone trunk's activations, or the images themselves."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ImgclustError

#: Kinds of model input.
ENCODING_KINDS = ("features", "trunk", "pixels")

_FEATURES_ID = "backbone"  # the id saved models store for clean backbone features


@dataclass(frozen=True)
class Encoding:
    """The kind of model input, explicit instead of parsed from strings at every use.

    Attributes:
        kind: ``"features"`` (clean pooled backbone features, every backbone of the source), ``"trunk"`` (the
            activations in front of the last ``blocks`` blocks of the first backbone, (N, C, H, W)) or
            ``"pixels"`` (the images themselves, uint8 (N, 3, size, size), for models trained from scratch).
        blocks: trainable backbone blocks behind the trunk (``"trunk"`` only).
        size: image side in pixels (``"pixels"`` only).

    :attr:`id` is the string form saved models store as ``input_encoder``: ``"backbone"``, ``"trunk-N"``,
    ``"pixels-S"``; :meth:`parse` reads it back.
    """

    kind: str = "features"
    blocks: int = 0
    size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ENCODING_KINDS:
            raise ValueError(f"encoding kind {self.kind!r} not in {ENCODING_KINDS}")
        if self.kind == "trunk" and self.blocks < 1:
            raise ValueError(f"a trunk encoding needs blocks >= 1, got {self.blocks}")
        if self.kind == "pixels" and self.size < 1:
            raise ValueError(f"a pixels encoding needs size >= 1, got {self.size}")

    @classmethod
    def features(cls) -> "Encoding":
        return cls("features")

    @classmethod
    def trunk(cls, blocks: int) -> "Encoding":
        return cls("trunk", blocks=int(blocks))

    @classmethod
    def pixels(cls, size: int) -> "Encoding":
        return cls("pixels", size=int(size))

    @classmethod
    def parse(cls, text: "str | Encoding") -> "Encoding":
        """``"backbone"`` → features, ``"trunk-N"`` → trunk, ``"pixels-S"`` → pixels; an Encoding passes through.

        Raises:
            ImgclustError: any other text (e.g. a model file written by a newer version).
        """
        if isinstance(text, Encoding):
            return text
        kind, _, number = str(text).partition("-")
        try:
            if text == _FEATURES_ID:
                return cls.features()
            if kind == "trunk" and number.isdigit():
                return cls.trunk(int(number))
            if kind == "pixels" and number.isdigit():
                return cls.pixels(int(number))
        except ValueError:
            pass  # trunk-0 or pixels-0: reported below
        raise ImgclustError(f"unknown model input {text!r}",
                            "expected 'backbone', 'trunk-N' or 'pixels-S' (N, S ≥ 1); was the model saved by a "
                            "newer imgclust?")

    @property
    def id(self) -> str:
        """The string form (``input_encoder`` of saved models, ``encoder_id`` of cache entries)."""
        if self.kind == "trunk":
            return f"trunk-{self.blocks}"
        if self.kind == "pixels":
            return f"pixels-{self.size}"
        return _FEATURES_ID

    def __str__(self) -> str:
        return self.id
