"""Batched image augmentations computed on the device, driven by an explicit ``torch.Generator``.

One :class:`BatchAugment` transforms a whole batch ``(N, 3, S, S)`` at once (no per-image Python loop, no
PIL), on whatever device the batch lives on. All randomness is drawn from the generator passed in, in a
fixed order whose amount depends only on N, so the same generator state and the same batch always give
the same output, on any device. It is used in two places:

* fine-tuning on a GPU: every training step augments its image batch on the device;
* the feature cache (:func:`imgclust.features.extract_features` with ``augment=``): the views of the
  images (or of a backbone trunk's activations) are computed once and stored.

Recipes (SimCLR's, as in SCAN's CIFAR/STL configs, and a weak one):

=========  ===================  =====  =====================================  =========
recipe     resized-crop scale   flip   colour jitter (b, c, s, h), prob       grayscale
=========  ===================  =====  =====================================  =========
simclr     (0.2, 1.0)           0.5    (0.4, 0.4, 0.4, 0.1), p = 0.8          p = 0.2
weak       (0.8, 1.0)           0.5    none                                   none
none       identity             -      -                                      -
=========  ===================  =====  =====================================  =========

Differences from torchvision's PIL/tensor transforms (deliberate, for batching):

* the random resized crop is one affine ``grid_sample`` (bilinear, border padding) per batch; the crop's
  width/height fractions are ``sqrt(scale·ratio)``/``sqrt(scale/ratio)`` clipped to 1 instead of
  torchvision's 10 rejection-sampling attempts;
* colour jitter always applies brightness → contrast → saturation → hue in this order (torchvision draws
  a random order per image); each image is jittered with probability ``jitter_p``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "SeCuAugment", "RECIPES", "derive_seed", "gaussian_blur", "make_generator", "secu_views"]

_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class _Recipe:
    crop_scale: tuple[float, float] | None
    crop_ratio: tuple[float, float]
    flip_p: float
    jitter: tuple[float, float, float, float]
    jitter_p: float
    grayscale_p: float


RECIPES: dict[str, _Recipe] = {
    "simclr": _Recipe((0.2, 1.0), (3 / 4, 4 / 3), 0.5, (0.4, 0.4, 0.4, 0.1), 0.8, 0.2),
    "weak": _Recipe((0.8, 1.0), (3 / 4, 4 / 3), 0.5, (0.0, 0.0, 0.0, 0.0), 0.0, 0.0),
    "none": _Recipe(None, (1.0, 1.0), 0.0, (0.0, 0.0, 0.0, 0.0), 0.0, 0.0),
}


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from a tuple of non-negative ints (e.g. ``(seed, epoch, step, view)``).

    Uses numpy's ``SeedSequence`` so nearby tuples give unrelated streams.
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def make_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` of ``keys``."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(derive_seed(*keys))
    return generator


class BatchAugment:
    """Random augmentation of a batch of images, computed on the batch's device.

    Args:
        recipe: ``"simclr"``, ``"weak"`` or ``"none"`` (see the module docstring); the other arguments
            override the recipe's values when given.
        size: output side length (default: the input's).
        crop_scale: (min, max) area fraction of the random resized crop; ``None`` = no crop (only resize
            to ``size``).
        crop_ratio: (min, max) aspect ratio of the crop, sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter: colour-jitter strengths (brightness, contrast, saturation, hue), as torchvision's
            ``ColorJitter``: factors are drawn from ``[1 - s, 1 + s]`` (hue: a shift in ``[-h, h]`` turns).
        jitter_p: probability that an image is colour-jittered.
        grayscale_p: probability that an image is turned to grayscale (3 equal channels).

    Call it as ``augment(images, generator)`` with images ``(N, 3, H, W)``, either uint8 (0..255) or float in
    [0, 1] (not mean/std-normalised: normalise after augmenting). The output has the input's dtype, and
    shape ``(N, 3, size, size)`` (``(N, 3, H, W)`` when ``size`` is ``None``).

    Examples:
        >>> aug = BatchAugment("simclr")
        >>> x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        >>> y = aug(x, make_generator(0, 1))
        >>> y.shape, y.dtype
        (torch.Size([8, 3, 32, 32]), torch.uint8)
    """

    def __init__(self, recipe: str = "simclr", *, size: int | None = None,
                 crop_scale: tuple[float, float] | None | str = "recipe",
                 crop_ratio: tuple[float, float] | None = None, flip_p: float | None = None,
                 jitter: tuple[float, float, float, float] | None = None, jitter_p: float | None = None,
                 grayscale_p: float | None = None):
        if recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}; choose one of {sorted(RECIPES)}")
        base = RECIPES[recipe]
        self.recipe = recipe
        self.size = None if size is None else int(size)
        self.crop_scale = base.crop_scale if isinstance(crop_scale, str) else crop_scale
        self.crop_ratio = tuple(crop_ratio) if crop_ratio is not None else base.crop_ratio
        self.flip_p = base.flip_p if flip_p is None else float(flip_p)
        self.jitter = tuple(float(j) for j in (base.jitter if jitter is None else jitter))
        self.jitter_p = base.jitter_p if jitter_p is None else float(jitter_p)
        self.grayscale_p = base.grayscale_p if grayscale_p is None else float(grayscale_p)
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 non-negative strengths with hue <= 0.5, got {self.jitter}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")

    # -- identity ---------------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """All settings, JSON-serialisable (for cache manifests and logs)."""
        return {"recipe": self.recipe, "size": self.size,
                "crop_scale": None if self.crop_scale is None else list(self.crop_scale),
                "crop_ratio": list(self.crop_ratio), "flip_p": self.flip_p, "jitter": list(self.jitter),
                "jitter_p": self.jitter_p, "grayscale_p": self.grayscale_p}

    @property
    def augment_id(self) -> str:
        """A short stable name of the settings, e.g. for ``extract_features(augment_id=...)``."""
        blob = json.dumps(self.spec(), sort_keys=True).encode()
        return f"{self.recipe}-{hashlib.sha256(blob).hexdigest()[:10]}"

    @property
    def is_identity(self) -> bool:
        return (self.crop_scale is None and self.flip_p == 0 and self.jitter_p == 0 and self.grayscale_p == 0)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items())
        return f"BatchAugment({args})"

    # -- the transform ----------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images`` (N, 3, H, W) uint8 or float in [0, 1]; same dtype out. See the class doc."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if not isinstance(generator, torch.Generator):
            raise TypeError("BatchAugment needs an explicit torch.Generator (see augment.make_generator)")
        dtype = images.dtype
        n, _, h, w = images.shape
        size = (self.size or h, self.size or w)
        x = images.float() / 255.0 if dtype == torch.uint8 else images.float()
        if n == 0:
            return images.new_empty((0, 3, *size))
        params = self._draw(n, generator, images.device)
        x = self._crop_flip(x, params, size)
        if self.jitter_p > 0 and any(s > 0 for s in self.jitter):
            x = self._jitter(x, params)
        if self.grayscale_p > 0:
            gray = _grayscale(x).expand_as(x)
            x = torch.where(params["gray"].view(n, 1, 1, 1), gray, x)
        x = x.clamp_(0.0, 1.0)
        if dtype == torch.uint8:
            return x.mul_(255.0).round_().to(torch.uint8)
        return x.to(dtype)

    def _draw(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """All random numbers of one call: one (N, 11) uniform draw, whatever the recipe."""
        u = torch.rand((n, 11), generator=generator, device=generator.device, dtype=torch.float64).to(device)
        params: dict[str, torch.Tensor] = {}
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            area = lo + (hi - lo) * u[:, 0]
            log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
            ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
            cw = torch.sqrt(area * ratio).clamp(max=1.0)
            ch = torch.sqrt(area / ratio).clamp(max=1.0)
            params["cw"], params["ch"] = cw, ch
            params["cx"] = (1 - cw) * (2 * u[:, 2] - 1)
            params["cy"] = (1 - ch) * (2 * u[:, 3] - 1)
        params["flip"] = u[:, 4] < self.flip_p
        params["gray"] = u[:, 5] < self.grayscale_p
        b, c, s, hue = self.jitter
        jitter_on = u[:, 6] < self.jitter_p
        one = torch.ones_like(u[:, 0])
        params["brightness"] = torch.where(jitter_on, 1 - b + 2 * b * u[:, 7], one)
        params["contrast"] = torch.where(jitter_on, 1 - c + 2 * c * u[:, 8], one)
        params["saturation"] = torch.where(jitter_on, 1 - s + 2 * s * u[:, 9], one)
        params["hue"] = torch.where(jitter_on, -hue + 2 * hue * u[:, 10], 0 * one)
        return {k: (t.float() if t.is_floating_point() else t) for k, t in params.items()}

    def _crop_flip(self, x: torch.Tensor, params: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        n = x.shape[0]
        flip = params["flip"]
        same_size = size == tuple(x.shape[-2:])
        if "cw" not in params:
            if not same_size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            return torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x) if bool(flip.any()) else x
        sign = 1.0 - 2.0 * flip.float()
        theta = torch.zeros((n, 2, 3), device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = params["cw"] * sign
        theta[:, 0, 2] = params["cx"]
        theta[:, 1, 1] = params["ch"]
        theta[:, 1, 2] = params["cy"]
        grid = F.affine_grid(theta, [n, 3, *size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        n = x.shape[0]

        def per_image(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, 1, 1, 1)

        # The same operations as out-of-place ones, in the same order (so the same values), on one buffer.
        x = (x * per_image(params["brightness"])).clamp_(0, 1)
        mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = x.sub_(mean).mul_(per_image(params["contrast"])).add_(mean).clamp_(0, 1)
        gray = _grayscale(x)
        x = x.sub_(gray).mul_(per_image(params["saturation"])).add_(gray).clamp_(0, 1)
        if self.jitter[3] > 0:
            x = _shift_hue(x, params["hue"])
        return x


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of (N, 3, H, W) RGB in [0, 1] (ITU-R 601, as torchvision)."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by ``shift`` (N,) turns, through HSV (as torchvision's adjust_hue)."""
    r, g, b = x.unbind(1)
    # Elementwise over the three planes: the same values as x.max(dim=1) / x.min(dim=1), which also compute the
    # indices and reduce across strided planes (a third of this function's time, measured).
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    # HSV -> RGB without branches: channel_n = v - v·s·clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    h6 = (hue * 6.0).unsqueeze(1)
    offsets = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (offsets + h6) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(1) * (1.0 - sat.unsqueeze(1) * ramp)


# ---------------------------------------------------------------------------------------------------------
# SeCu's two asymmetric views (BYOL style): BatchAugment plus Gaussian blur and solarisation
# ---------------------------------------------------------------------------------------------------------

class SeCuAugment(BatchAugment):
    """:class:`~imgclust.augment.BatchAugment` plus Gaussian blur and solarisation, batched.

    Args:
        blur_p: probability of a Gaussian blur with σ ~ U(blur_sigma) pixels (MoCo v3's ``GaussianBlur``).
        blur_sigma: (min, max) σ in pixels.
        solarize_p: probability of inverting the pixels ≥ 128/255 (``ImageOps.solarize``).
        **kwargs: passed to :class:`BatchAugment`.

    Blur and solarisation come after BatchAugment's crop/flip/jitter/grayscale (the authors blur after
    grayscale and flip last; flipping commutes with both). Their random numbers are one extra (N, 3) draw
    from the same generator, after BatchAugment's.
    """

    def __init__(self, recipe: str = "simclr", *, blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 solarize_p: float = 0.0, **kwargs: Any):
        super().__init__(recipe, **kwargs)
        self.blur_p = float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.solarize_p = float(solarize_p)
        if not (0.0 <= self.blur_p <= 1.0 and 0.0 <= self.solarize_p <= 1.0):
            raise ValueError(f"blur_p and solarize_p must be probabilities, got {blur_p}, {solarize_p}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {blur_sigma}")

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.update({"blur_p": self.blur_p, "blur_sigma": list(self.blur_sigma), "solarize_p": self.solarize_p})
        return out

    @property
    def is_identity(self) -> bool:
        return super().is_identity and self.blur_p == 0 and self.solarize_p == 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = super().__call__(images, generator)
        n = out.shape[0]
        if n == 0 or (self.blur_p == 0 and self.solarize_p == 0):
            return out
        u = torch.rand((n, 3), generator=generator, device=generator.device, dtype=torch.float64).to(out.device)
        dtype = out.dtype
        x = out.float() / 255.0 if dtype == torch.uint8 else out.float()
        blur = u[:, 0] < self.blur_p
        if bool(blur.any()):
            lo, hi = self.blur_sigma
            sigma = (lo + (hi - lo) * u[:, 1]).float()
            rows = torch.nonzero(blur).squeeze(1)
            x = x.clone()
            x[rows] = gaussian_blur(x[rows], sigma[rows], hi)
        solar = (u[:, 2] < self.solarize_p).view(n, 1, 1, 1)
        if bool(solar.any()):
            x = torch.where(solar & (x >= 128.0 / 255.0), 1.0 - x, x)
        if dtype == torch.uint8:
            return x.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
        return x.to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with one σ per image (reflect padding).

    Args:
        x: (N, C, H, W) float images.
        sigma: (N,) standard deviations in pixels.
        max_sigma: the largest σ that may occur; sets the kernel radius ``ceil(3·max_sigma)``.

    Returns:
        (N, C, H, W) blurred images.
    """
    n, c, h, w = x.shape
    radius = max(1, min(int(math.ceil(3 * max_sigma)), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t[None, :] ** 2) / (2 * sigma.to(x.dtype)[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N·C, 2r+1)
    size = 2 * radius + 1
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel.view(n * c, 1, size, 1), groups=n * c)
    return y.view(n, c, h, w)


def secu_views(min_crop: float = 0.3, size: int | None = None) -> list[SeCuAugment]:
    """The authors' two asymmetric views.

    View 1: RandomResizedCrop(scale=(min_crop, 1)), ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2,
    Gaussian blur σ∈[0.1, 2] **p 1.0**, horizontal flip. View 2: the same with blur **p 0.1** and
    **solarize p 0.2**.
    """
    common = dict(size=size, crop_scale=(float(min_crop), 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5,
                  jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2)
    return [SeCuAugment("simclr", blur_p=1.0, solarize_p=0.0, **common),
            SeCuAugment("simclr", blur_p=0.1, solarize_p=0.2, **common)]
