"""Decode one image file (or one array row) into a fully loaded RGB PIL image, or say why it can't be used.

Everything here is a pure function with no global state, so it is safe in DataLoader worker processes.
Pillow's global switches (``ImageFile.LOAD_TRUNCATED_IMAGES``, ``Image.MAX_IMAGE_PIXELS``) are never touched.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from typing import BinaryIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import BadImageError

#: Default per-file limit on width × height, the same as Pillow's own decompression-bomb threshold.
DEFAULT_MAX_PIXELS = 89_478_485

#: Modes holding more than 8 bits per sample: ``convert("RGB")`` would clip them, so they are rescaled.
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

_WHITE = (255, 255, 255)


def open_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft_size: int | None = None) -> Image.Image:
    """Open an image file read-only and return it decoded, upright (EXIF orientation applied) and in RGB.

    Args:
        path: the image file.
        max_pixels: refuse files whose declared width × height exceeds this, before decoding anything
            (decompression-bomb guard). ``None`` keeps only Pillow's own guard, which still refuses files
            over twice ``PIL.Image.MAX_IMAGE_PIXELS``.
        draft_size: the side the caller will resize to. JPEGs are then decoded at the smallest power-of-two
            reduction whose sides are both still ``>= draft_size``, which is several times faster for photos.
            Other formats ignore it.

    Returns:
        An RGB image of shape (H, W, 3), detached from the file (the file is closed on return).
        Multi-frame files (GIF, APNG, TIFF) give their first frame; transparency is composited on white.

    Raises:
        BadImageError: the file is missing, unreadable, empty, not an image, truncated or corrupt, too large,
            or a broken symbolic link. The message names the file and the reason.
    """
    path = Path(path)
    fh = _open_readonly(path)
    with fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise _bad(path, "the file is empty (0 bytes)")
        # Any exception from here on means the bytes are not a usable image: Pillow raises a wide, undocumented
        # set (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, …) for corrupt input.
        try:
            with warnings.catch_warnings():
                # the max_pixels check below decides; Pillow's own warning would only reach the terminal
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise _bad(path, f"declared size is too large ({exc})") from None
        except Image.UnidentifiedImageError:
            raise _bad(path, f"not an image format Pillow can read (first bytes: {_head(path)!r})") from None
        except Exception as exc:  # noqa: BLE001 (see above)
            raise _bad(path, f"unreadable image header: {type(exc).__name__}: {exc}") from None
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise _bad(path, f"declared size {width}x{height} = {width * height:,} pixels exceeds the limit of "
                             f"{max_pixels:,} (decompression-bomb guard); if the image is genuine, raise the limit "
                             "(imgclust cluster --max-pixels N; Python: max_pixels=N)")
        try:
            if draft_size is not None and img.format == "JPEG":
                img.draft(None, (draft_size, draft_size))
            img.load()  # forces the full decode now, so truncation surfaces here and not in a later resize
        except Exception as exc:  # noqa: BLE001 (see above)
            raise _bad(path, f"truncated or corrupt image data ({img.format}): {type(exc).__name__}: {exc}") \
                from None
        try:
            # exif_transpose always returns a new image, so the result no longer refers to the file.
            upright = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001
            # The pixels decoded fine; only the orientation metadata is unreadable, so keep the image as stored.
            upright = img.copy()
        try:
            return _to_rgb(upright)
        except Exception as exc:  # noqa: BLE001 (e.g. LAB or HSV TIFFs that Pillow cannot convert)
            raise _bad(path, f"colour mode {upright.mode} cannot be converted to RGB: {exc}") from None


def array_to_image(array: np.ndarray) -> Image.Image:
    """Turn one uint8 image array into an RGB PIL image.

    Args:
        array: uint8 of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); a 4th channel is alpha and is
            composited on white.

    Returns:
        RGB image of shape (H, W, 3).

    Raises:
        ValueError: wrong dtype or shape (datasets validate their arrays up front, so this is a bug).
    """
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L").convert("RGB")
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    if array.ndim == 3 and array.shape[2] == 4:
        return _flatten_on_white(Image.fromarray(np.ascontiguousarray(array), mode="RGBA"))
    raise ValueError(f"expected an image array of shape (H,W), (H,W,1), (H,W,3) or (H,W,4), got {array.shape}")


def _open_readonly(path: Path):
    """Open ``path`` for binary reading, turning each OS failure into a BadImageError with a plain reason.

    Only regular files are read: a pipe or device named like an image could block a run forever.
    """
    if path.is_symlink() and not path.exists():
        if _is_link_loop(path):
            raise _bad(path, "symbolic link loop (following the link leads back to itself)")
        raise _bad(path, f"broken symbolic link (its target {os.readlink(path)} does not exist)")
    try:
        fh = open_regular_file(path)
    except NotRegularFileError:
        raise _bad(path, "not a regular file (a pipe, socket or device named like an image)") from None
    except FileNotFoundError:
        raise _bad(path, "file not found (deleted or moved after the folder was scanned?)") from None
    except PermissionError:
        raise _bad(path, "permission denied (the file is not readable by this user)") from None
    except IsADirectoryError:
        raise _bad(path, "is a folder, not an image file") from None
    except OSError as exc:
        raise _bad(path, f"cannot be opened: {exc.strerror or exc}") from None
    return fh


class NotRegularFileError(OSError):
    """A pipe, socket or device where a file was expected."""


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading, only if it is a regular file (NotRegularFileError otherwise).

    Every reader of the user's files goes through here: a pipe or device named like an image would otherwise
    block a run forever. O_NONBLOCK makes the open itself return at once (regular files ignore it), and the check
    is made on the opened file, so a file swapped for a pipe after a stat is still caught.
    """
    fh = open(path, "rb", opener=_open_nonblocking)
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise NotRegularFileError(f"{path} is not a regular file")
    return fh


def _open_nonblocking(path: str, flags: int) -> int:
    # Opening a pipe for reading would wait for a writer; O_NONBLOCK returns at once (regular files ignore it).
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _is_link_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB without clipping high bit depths and without black transparent areas."""
    if img.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_to_uint8(np.asarray(img), img.mode), mode="L").convert("RGB")
    if img.has_transparency_data:
        # covers RGBA/LA/PA and also P, L or RGB images with a tRNS transparent colour
        return _flatten_on_white(img.convert("RGBA"))
    if img.mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, …


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel high-depth array (H, W) to uint8 (H, W) by scaling, never by clipping.

    16-bit modes use their full 0..65535 range. Mode ``I`` (32-bit int) and ``F`` (float) carry no declared
    range, so the range is inferred from the values: 0..255 is kept, ``I`` within 0..65535 is treated as
    16-bit, ``F`` within 0..1 as unit range, and anything else is min-max stretched.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and 255 < high <= 65535):
        scaled = values / 257.0
    elif low >= 0 and high <= 1 and mode == "F":
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image on a white background (transparent areas would otherwise turn black)."""
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _head(path: Path, n: int = 8) -> bytes:
    """The first ``n`` bytes of the file, to show the user what it actually contains."""
    with open(path, "rb") as fh:
        return fh.read(n)


def _bad(path: Path, reason: str) -> BadImageError:
    return BadImageError(f"{path}: {reason}", "the image is skipped; fix or remove the file to include it")
