"""BatchAugment: shapes/dtypes, determinism per generator, and what each recipe does."""

from __future__ import annotations

import pytest
import torch

from imgclust.augment import RECIPES, BatchAugment, derive_seed, make_generator


def _images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_dtype_range_preserved(recipe: str, dtype: torch.dtype) -> None:
    x = _images()
    x = x if dtype == torch.uint8 else x.float() / 255
    y = BatchAugment(recipe)(x, make_generator(0))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    if dtype != torch.uint8:
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_output_size() -> None:
    y = BatchAugment("simclr", size=8)(_images(size=16), make_generator(0))
    assert y.shape == (6, 3, 8, 8)
    y = BatchAugment("none", size=8)(_images(size=16).float() / 255, make_generator(0))
    assert y.shape == (6, 3, 8, 8)


@pytest.mark.parametrize("recipe", ["simclr", "weak"])
def test_deterministic_for_a_generator_state(recipe: str) -> None:
    aug, x = BatchAugment(recipe), _images()
    a = aug(x, make_generator(1, 2, 3))
    b = aug(x, make_generator(1, 2, 3))
    c = aug(x, make_generator(1, 2, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The generator advances: two calls in a row differ, and replay the same way.
    g1, g2 = make_generator(7), make_generator(7)
    first, second = aug(x, g1), aug(x, g1)
    assert not torch.equal(first, second)
    assert torch.equal(first, aug(x, g2)) and torch.equal(second, aug(x, g2))


def test_none_is_identity_and_input_untouched() -> None:
    x = _images()
    keep = x.clone()
    assert torch.equal(BatchAugment("none")(x, make_generator(0)), x)
    BatchAugment("simclr")(x, make_generator(0))
    assert torch.equal(x, keep)


def test_flip_only_flips() -> None:
    x = _images().float() / 255
    aug = BatchAugment("none", flip_p=1.0)
    assert torch.allclose(aug(x, make_generator(0)), x.flip(-1))


def test_full_crop_without_flip_is_identity() -> None:
    x = _images().float() / 255
    aug = BatchAugment("weak", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(aug(x, make_generator(0)), x, atol=1e-5)


def test_grayscale_makes_equal_channels() -> None:
    y = BatchAugment("none", grayscale_p=1.0)(_images().float() / 255, make_generator(0))
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])


def test_hue_matches_torchvision() -> None:
    from torchvision.transforms.v2 import functional as TF

    from imgclust.augment import _shift_hue

    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for h in (-0.4, 0.0, 0.1, 0.5):
        assert torch.allclose(_shift_hue(x, torch.full((3,), h)), TF.adjust_hue(x, h), atol=1e-5)


def test_simclr_changes_images_and_crops_zoom_in() -> None:
    x = torch.zeros(64, 3, 16, 16)
    x[:, :, :, :8] = 1.0  # left half white: a crop changes the white fraction
    y = BatchAugment("simclr", jitter_p=0.0, grayscale_p=0.0)(x, make_generator(0))
    frac = y.mean(dim=(1, 2, 3))
    assert frac.std() > 0.05


def test_validation_and_spec() -> None:
    with pytest.raises(ValueError):
        BatchAugment("autoaugment")
    with pytest.raises(ValueError):
        BatchAugment("simclr", crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError):
        BatchAugment("simclr")(torch.zeros(2, 1, 4, 4), make_generator(0))
    with pytest.raises(TypeError):
        BatchAugment("simclr")(torch.zeros(2, 3, 4, 4), None)  # type: ignore[arg-type]
    a, b = BatchAugment("simclr"), BatchAugment("simclr", jitter_p=0.5)
    assert a.augment_id != b.augment_id and a.augment_id == BatchAugment("simclr").augment_id
    assert a.spec()["recipe"] == "simclr"


def test_derive_seed_separates_keys() -> None:
    assert derive_seed(0, 1) != derive_seed(1, 0)
    assert derive_seed(3, 4, 5) == derive_seed(3, 4, 5)
    assert 0 <= derive_seed(2**40, 7) < 2**63


def test_empty_batch() -> None:
    y = BatchAugment("simclr")(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), make_generator(0))
    assert y.shape == (0, 3, 8, 8) and y.dtype == torch.uint8
