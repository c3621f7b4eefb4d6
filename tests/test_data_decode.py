"""open_image / array_to_image: every colour mode to RGB, and every kind of bad file to a BadImageError."""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.data import decode
from imgclust.data.decode import DEFAULT_MAX_PIXELS, array_to_image, open_image
from imgclust.errors import BadImageError


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def _noise(h: int = 64, w: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# --- colour modes ---------------------------------------------------------------------------------------------

def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = _pixels(open_image(_save(Image.fromarray(gray, "L"), tmp_path / "g.png")))
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(tmp_path: Path, mode: str) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 40
    rgba[0, :, 3] = 0      # fully transparent row: must become white, not black
    rgba[1:, :, 3] = 255   # opaque rows keep their colour
    img = Image.fromarray(rgba, "RGBA").convert(mode)
    out = _pixels(open_image(_save(img, tmp_path / f"{mode}.png")))
    assert (out[0] == 255).all()
    assert (out[1:] == 40).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.info["transparency"] = 0   # palette index 0 (black) is transparent
    out = _pixels(open_image(_save(img, tmp_path / "p.png", transparency=0)))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (200, 10, 10)


def test_palette_gif_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    assert tuple(_pixels(open_image(_save(img, tmp_path / "p.gif")))[2, 2]) == (10, 200, 10)


def test_16_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    path = _save(img, tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")  # really stored with 16 bits
    out = _pixels(open_image(path))[0, :, 0]
    # clipping would give 255 for 1000 and 32896; scaling by 257 keeps the relative brightness
    np.testing.assert_array_equal(out, [0, 4, 128, 255])


def test_32_bit_int_and_float_modes(tmp_path: Path) -> None:
    ints = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert ints.mode == "I"
    np.testing.assert_array_equal(_pixels(open_image(_save(ints, tmp_path / "i.tif")))[0, :, 0], [0, 255])
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert floats.mode == "F"
    np.testing.assert_array_equal(_pixels(open_image(_save(floats, tmp_path / "f.tif")))[0, :, 0], [0, 128, 255])


def test_cmyk(tmp_path: Path) -> None:
    cyan = Image.new("CMYK", (4, 4), (255, 0, 0, 0))
    assert tuple(_pixels(open_image(_save(cyan, tmp_path / "c.tif")))[0, 0]) == (0, 255, 255)
    jpeg = _pixels(open_image(_save(cyan, tmp_path / "c.jpg", quality=95)))
    assert jpeg.shape == (4, 4, 3) and jpeg[0, 0, 0] < 30 and jpeg[0, 0, 1] > 220


def test_one_bit(tmp_path: Path) -> None:
    bits = Image.fromarray(np.eye(4, dtype=bool))
    assert bits.mode == "1"
    out = _pixels(open_image(_save(bits, tmp_path / "b.png")))
    np.testing.assert_array_equal(out[:, :, 0], np.eye(4, dtype=np.uint8) * 255)


def test_multi_frame_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert tuple(_pixels(open_image(path))[0, 0]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = open_image(_save(img, tmp_path / "o.jpg", exif=exif))
    assert out.size == (20, 40)


def test_jpeg_draft_decodes_large_photos_smaller(tmp_path: Path) -> None:
    path = _save(_noise(1600, 2000), tmp_path / "big.jpg", quality=80)
    assert open_image(path).size == (2000, 1600)
    # largest power-of-two reduction that keeps both sides >= 224: 2000x1600 / 4
    assert open_image(path, draft_size=224).size == (500, 400)
    # other formats ignore the hint
    assert open_image(_save(_noise(300, 300), tmp_path / "p.png"), draft_size=64).size == (300, 300)


def test_result_is_detached_and_leaks_no_file_handles(tmp_path: Path) -> None:
    paths = [_save(_noise(seed=i), tmp_path / f"{i}.{ext}") for i, ext in enumerate(["jpg", "png", "gif"] * 5)]
    before = len(os.listdir("/proc/self/fd"))
    images = [open_image(p) for p in paths]
    assert len(os.listdir("/proc/self/fd")) == before
    for p in paths:
        p.unlink()
    assert all(img.tobytes() for img in images)


def test_source_file_is_not_modified(tmp_path: Path) -> None:
    path = _save(_noise(), tmp_path / "keep.jpg")
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    data, mtime = path.read_bytes(), path.stat().st_mtime_ns
    open_image(path, draft_size=16)
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime


@pytest.mark.shared_data
def test_real_cifar_jpeg(cifar10_dir: Path) -> None:
    out = open_image(cifar10_dir / "test" / "cat" / "0000.jpg")
    assert out.mode == "RGB" and out.size == (32, 32)


# --- bad files ------------------------------------------------------------------------------------------------

def _reason(path: Path, **kwargs) -> str:
    with pytest.raises(BadImageError) as info:
        open_image(path, **kwargs)
    assert str(path) in info.value.message
    return info.value.message


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated_files(tmp_path: Path, ext: str) -> None:
    full = tmp_path / f"full.{ext}"
    _save(_noise(128, 128), full)
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert "truncated or corrupt" in _reason(cut)


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").touch()
    assert "empty" in _reason(tmp_path / "empty.jpg")


def test_random_bytes_and_text_are_not_images(tmp_path: Path) -> None:
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not an image" in _reason(noise)
    text = tmp_path / "notes.png"
    text.write_text("hello, this is not a picture\n")
    assert "b'hello, t'" in _reason(text)


def _png_claiming(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose header declares width x height but whose pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_declared_size_over_the_limit_is_refused_without_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))  # 10^10 pixels declared, no pixel data at all
    start = time.perf_counter()
    assert "too large" in _reason(bomb)
    assert time.perf_counter() - start < 1.0
    # the per-call limit applies below Pillow's own threshold too
    small = _save(_noise(64, 64), tmp_path / "small.png")
    assert "64x64 = 4,096 pixels exceeds the limit of 1,000" in _reason(small, max_pixels=1000)
    assert open_image(small, max_pixels=4096).size == (64, 64)
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS


def test_missing_file_folder_and_broken_symlink(tmp_path: Path) -> None:
    assert "not found" in _reason(tmp_path / "gone.jpg")
    (tmp_path / "dir.jpg").mkdir()
    assert "folder" in _reason(tmp_path / "dir.jpg")
    link = tmp_path / "link.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    assert "broken symbolic link" in _reason(link)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode; "
                                                "test_permission_error_reason covers the message")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _save(_noise(), tmp_path / "secret.png")
    path.chmod(0)
    try:
        assert "permission denied" in _reason(path)
    finally:
        path.chmod(0o644)


def test_permission_error_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_noise(), tmp_path / "secret.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode, "open", denied, raising=False)  # shadows the builtin inside decode only
    assert "permission denied" in _reason(path)


# --- arrays ---------------------------------------------------------------------------------------------------

def test_array_to_image_shapes() -> None:
    gray = np.full((5, 6), 7, dtype=np.uint8)
    for arr in (gray, gray[:, :, None]):
        out = _pixels(array_to_image(arr))
        assert out.shape == (5, 6, 3) and (out == 7).all()
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_pixels(array_to_image(rgb)), rgb)
    np.testing.assert_array_equal(_pixels(array_to_image(np.asfortranarray(rgb))), rgb)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    out = _pixels(array_to_image(rgba))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 1]) == (255, 255, 255)


def test_array_to_image_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        array_to_image(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        array_to_image(np.zeros((4, 4, 2), dtype=np.uint8))

