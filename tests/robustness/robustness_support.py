"""Helpers of the robustness suite (issue #7, "Nothing lost, nobody in").

The suite drives the real commands (``imgclust cluster/export/predict/report``) end to end: in this process
through :func:`imgclust.cli.main`, or as child processes that are SIGKILLed at a point read from the files they
write (shard records of the feature cache, lines of ``train_log.jsonl``, exported files). One file per point of
the issue:

====================  =========================================================================================
test_interruption.py  1. SIGKILL during feature extraction, training and export; the rerun resumes and ends
                      with the result of an uninterrupted run; no file is ever half-written
test_bad_files.py     2. bad files (hypothesis): the run finishes, lists exactly the bad ones, clusters the rest
test_bad_numbers.py   3. NaN/inf, identical or duplicate images, K > distinct images, one class: clear errors
test_untrusted.py     4. malicious pickles refused, report HTML escaped, export never writes outside --to
test_concurrent.py    5. a second run on the same output folder refused (lock file)
test_offline.py       6. under ``unshare -n``: local work runs, what needs a download fails at once, naming it
====================  =========================================================================================

Unit tests of the same properties live next to their modules: atomic shards and resume of the feature cache
(``tests/test_features.py``), exact training resume (``tests/test_train_loop.py``), malicious weights
(``tests/test_backbones.py``), export name checks (``tests/test_export.py``), report escaping in a real browser
(``tests/test_report_html.py``), decoding of odd image files (``tests/test_data_decode.py``).

Every test adds what it tried to :data:`TALLY`; the totals are printed at the end of the pytest run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TEMP_SUFFIX = ".imgclust-tmp"   # imgclust._io.TEMP_SUFFIX, spelled out: the tests check the library
LOCK_NAME = ".imgclust.lock"
OUTPUT_MARKER = ".imgclust-output"  # imgclust._io.OUTPUT_MARKER, spelled out likewise

#: (category, what) → count, summed over the session; categories "bad input", "interruption" (survived),
#: "concurrent use", "offline" and "lost" (files or results lost: always 0 when the tests pass).
TALLY: Counter = Counter()


def record(category: str, what: str, n: int = 1) -> None:
    TALLY[(category, what)] += n


class _Summary:
    """Prints :data:`TALLY` after the test results."""

    def pytest_terminal_summary(self, terminalreporter) -> None:  # noqa: ANN001 (pytest's hook signature)
        if not TALLY:
            return
        write = terminalreporter.write_line
        terminalreporter.section("robustness suite (issue #7): what was tried")
        for category in ("bad input", "interruption", "concurrent use", "offline"):
            entries = sorted((what, n) for (cat, what), n in TALLY.items() if cat == category)
            if entries:
                write(f"{category}: {sum(n for _, n in entries)} cases")
                for what, n in entries:
                    write(f"  {n:5d}  {what}")
        lost = sum(n for (cat, _), n in TALLY.items() if cat == "lost")
        write(f"lost: {lost} files/results" + (" (nothing)" if lost == 0 else ""))


@pytest.fixture(autouse=True, scope="session")
def robustness_summary(request: pytest.FixtureRequest) -> None:
    """Registers the end-of-run summary once (import this fixture into each test module)."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("imgclust-robustness-summary"):
        manager.register(_Summary(), "imgclust-robustness-summary")


# -- in-process commands ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def no_hang(seconds: int, what: str) -> Iterator[None]:
    """Fail (instead of waiting forever) when the block runs longer than ``seconds``."""
    def alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(args: list[str | Path], capsys: pytest.CaptureFixture, seconds: int = 300) -> tuple[int, str]:
    """``imgclust ARGS`` in this process: (exit code, stderr + stdout)."""
    from imgclust.cli import main

    argv = [str(a) for a in args]
    with no_hang(seconds, f"imgclust {' '.join(argv[:2])}"):
        code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


# -- child processes ---------------------------------------------------------------------------------------

_CHILD = """\
import sys
{setup}
from imgclust.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Child:
    """An ``imgclust`` command running in its own process group, its output going to files."""

    process: subprocess.Popen
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stderr.read_text(errors="replace") + self.stdout.read_text(errors="replace")

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the command still ran after {timeout} s (a hang); its output:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the command and every process it started (DataLoader workers…)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def wait_until(self, ready: Callable[[], bool], timeout: float = 240) -> None:
        """Return as soon as ``ready()`` holds; fail if the command ends or stalls before that."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                pytest.fail(f"the command ended (exit {self.process.returncode}) before the awaited point; "
                            f"its output:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"awaited point not reached in {timeout} s; output:\n{self.output()[-3000:]}")
            time.sleep(0.005)

    def kill_when(self, ready: Callable[[], bool], timeout: float = 240) -> None:
        """SIGKILL as soon as ``ready()`` holds; fail if the command ends or stalls before that."""
        self.wait_until(ready, timeout)
        self.kill()


def child_env(**extra: str) -> dict[str, str]:
    # One intra-op thread, as the in-process reference runs use (single_thread): same numbers, and no
    # OpenMP spin-waiting on a shared 2-core machine.
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **extra}


def start_child(args: list[str | Path], log_dir: Path, setup: str = "", env: dict[str, str] | None = None
                ) -> Child:
    """Start ``imgclust ARGS`` as a child process; ``setup`` is Python run before the command (test patches)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(log_dir.glob("*.stderr")))
    stdout, stderr = log_dir / f"{n}.stdout", log_dir / f"{n}.stderr"
    code = _CHILD.format(setup=textwrap.dedent(setup))
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen([sys.executable, "-c", code, *[str(a) for a in args]],
                                   stdout=out, stderr=err, env=env or child_env(), cwd=REPO,
                                   start_new_session=True)
    return Child(process, stdout, stderr)


# -- checking output folders ---------------------------------------------------------------------------------

def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"*{TEMP_SUFFIX}"))


def assert_whole_files(folder: Path) -> int:
    """Every file under ``folder`` but the hidden temporaries of unfinished writes reads back completely.

    Returns the number of files checked. An unknown kind of file fails: the check must cover all of them.
    """
    from PIL import Image

    checked = 0
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.name.endswith(TEMP_SUFFIX) or path.name == LOCK_NAME:
            continue
        if path.suffix == ".lock" and path.stat().st_size == 0:
            continue  # a feature-cache entry's lock file (flock'd, never written)
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif suffix == ".jsonl":
                text = path.read_text(encoding="utf-8")
                assert text == "" or text.endswith("\n")
                [json.loads(line) for line in text.splitlines()]
            elif suffix == ".csv":
                rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
                assert rows and all(len(r) == len(rows[0]) for r in rows)
            elif suffix == ".npy":
                np.load(path, allow_pickle=False)
            elif suffix == ".pt":
                from imgclust.train import load_checkpoint

                load_checkpoint(path)
            elif suffix == ".safetensors":
                from safetensors.numpy import load_file

                load_file(path)
            elif suffix == ".html":
                assert path.read_text(encoding="utf-8").rstrip().endswith("</html>")
            elif suffix in (".png", ".jpg", ".jpeg"):
                with Image.open(path) as image:
                    image.load()
            elif path.name == OUTPUT_MARKER:  # a run folder's marker (one line of text)
                assert path.read_text(encoding="utf-8").endswith("\n")
            else:
                pytest.fail(f"unexpected file {path}: the whole-file check does not know it")
        except Exception as err:  # noqa: BLE001 (any failure to read back is the finding)
            pytest.fail(f"{path} is not a whole file: {type(err).__name__}: {err}")
        checked += 1
    return checked


def tree(folder: Path) -> dict[str, str]:
    """relative path → link target or content digest, hidden entries included (the run lock excepted)."""
    import hashlib

    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.name == LOCK_NAME:
            continue
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def read_assignments(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def assert_same_assignments(got: Path, expected: Path, confidence_atol: float = 1e-4) -> None:
    a, b = read_assignments(got), read_assignments(expected)
    assert a.keys() == b.keys()
    for item in a:
        assert a[item]["cluster"] == b[item]["cluster"], item
        assert a[item].get("label") == b[item].get("label"), item
        if b[item]["confidence"]:
            assert abs(float(a[item]["confidence"]) - float(b[item]["confidence"])) <= confidence_atol, item


# -- data --------------------------------------------------------------------------------------------------

def digits_embeddings(path: Path, n: int = 300) -> Path:
    """The first ``n`` scikit-learn digits (real 8x8 scans) as bring-your-own embeddings (64-d) with labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(path, features=digits.data[:n].astype(np.float32), labels=digits.target[:n])
    return path


def copy_cifar(cifar10_dir: Path, dest: Path, per_class: int, classes: list[str], start: int = 0,
               sub_folders: bool = True) -> list[Path]:
    """Copy real CIFAR-10 test JPEGs (files ``start .. start+per_class-1`` of each class) into ``dest``,
    in class sub-folders or flat as ``<class>_<file>``."""
    copies = []
    for name in classes:
        for src in sorted((cifar10_dir / "test" / name).glob("*.jpg"))[start:start + per_class]:
            target = dest / name / src.name if sub_folders else dest / f"{name}_{src.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            copies.append(target)
    return copies


# -- bad files -----------------------------------------------------------------------------------------------

#: Every kind of bad file the suite plants. "unreadable" needs a user that file modes apply to (not root).
BAD_KINDS = ("random bytes", "zero bytes", "truncated JPEG", "truncated PNG", "huge declared size (PNG)",
             "huge declared size (JPEG)", "broken symlink", "symlink loop", "pipe (FIFO)", "unreadable (mode 000)")


def modes_apply() -> bool:
    """Whether a file with mode 000 is unreadable here (it is not for root)."""
    import tempfile

    with tempfile.NamedTemporaryFile() as probe:
        os.chmod(probe.name, 0)
        try:
            open(probe.name, "rb").close()
        except PermissionError:
            return True
        return False


def png_bytes(jpeg: bytes) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(io.BytesIO(jpeg)) as image:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG that declares ``width`` x ``height`` pixels and holds none."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """A real baseline JPEG whose frame header is rewritten to declare ``width`` x ``height`` (max 65535)."""
    import struct

    sof = jpeg.find(b"\xff\xc0")
    assert sof > 0, "expected a baseline JPEG"
    return jpeg[:sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9:]


def plant(kind: str, path: Path, jpeg: bytes, *, data: bytes = b"\x00", cut: float = 0.5,
          size: tuple[int, int] = (100_000, 100_000), links: int = 2) -> list[Path]:
    """Create one bad file of ``kind`` at ``path`` from a real JPEG; return the paths a scan will list.

    ``data``: content of "random bytes"; ``cut``: fraction kept of a truncated file (< 0.9, so pixel data is
    always missing); ``size``: (width, height) a "huge" file declares; ``links``: length of a symlink loop.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    made = [path]
    if kind == "random bytes":
        path.write_bytes(data)
    elif kind == "zero bytes":
        path.write_bytes(b"")
    elif kind in ("truncated JPEG", "truncated PNG"):
        whole = jpeg if kind == "truncated JPEG" else png_bytes(jpeg)
        path.write_bytes(whole[:max(1, int(len(whole) * cut))])
    elif kind == "huge declared size (PNG)":
        path.write_bytes(png_claiming(*size))
    elif kind == "huge declared size (JPEG)":
        path.write_bytes(jpeg_claiming(jpeg, *size))
    elif kind == "broken symlink":
        path.symlink_to(f"gone-{path.name}")
    elif kind == "symlink loop":
        made = [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(links)]
        for i, link in enumerate(made):
            link.symlink_to(made[(i + 1) % links].name)
    elif kind == "pipe (FIFO)":
        os.mkfifo(path)
    elif kind == "unreadable (mode 000)":
        path.write_bytes(jpeg)
        path.chmod(0)
    else:
        raise ValueError(f"unknown bad-file kind {kind!r}")
    return made


def plant_fixed_bad_files(folder: Path, jpeg: bytes, evil_name: str) -> dict[Path, str]:
    """One bad file of each kind (unreadable only where modes apply), in ``folder`` and its ``more/``, plus
    random bytes under an HTML-like name."""
    planted: dict[Path, str] = {}
    kinds = [k for k in BAD_KINDS if k != "unreadable (mode 000)" or modes_apply()]
    extensions = (".jpg", ".png", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".PNG", ".Jpg")
    for i, kind in enumerate(kinds):
        sub = folder if i % 2 else folder / "more"
        name = f"bad{i:02d}-{kind.split()[0]}{extensions[i % len(extensions)]}"
        for path in plant(kind, sub / name, jpeg, data=bytes(range(256)) * 3, cut=0.4, size=(40_000, 30_000)):
            planted[path] = kind
    planted[plant("random bytes", folder / evil_name, jpeg, data=b"<html>not an image</html>")[0]] = "random bytes"
    return planted


# -- the shared mixed run: good images, bad files and HTML-like names, clustered once --------------------------

#: Good images whose names are HTML (must stay text in the report; must export as plain names).
EVIL_GOOD_NAMES = ["<script>alert(1)<script>.jpg", "\"><img src=x onerror=alert(2)>.png", "a & b 'q' <i>.JPG"]
#: A bad file whose name is HTML (listed as skipped: escaped too).
EVIL_BAD_NAME = "<b onmouseover=alert(3)>bad<b>.jpg"


@dataclass
class MixedRun:
    """A folder of real images mixed with every kind of bad file, and the run folder of ``imgclust cluster``."""

    photos: Path
    run: Path
    cache: Path
    good: list[str] = field(default_factory=list)       # absolute paths that must be clustered
    bad: dict[str, str] = field(default_factory=dict)   # absolute path → kind, must be listed as skipped
    ignored: list[str] = field(default_factory=list)    # not images by name: neither clustered nor listed


_MIXED: dict[Path, MixedRun] = {}


def mixed_run(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path) -> MixedRun:
    """Built once per session (every module that needs it shares it; none may modify it)."""
    key = tmp_path_factory.getbasetemp()
    if key not in _MIXED:
        _MIXED[key] = _build_mixed_run(tmp_path_factory.mktemp("mixed"), cifar10_dir)
    return _MIXED[key]


def _build_mixed_run(root: Path, cifar10_dir: Path) -> MixedRun:
    from imgclust.cli import main

    photos = root / "photos"
    good = copy_cifar(cifar10_dir, photos / "more", 5, ["airplane", "frog", "truck"], sub_folders=False)
    jpeg_sources = sorted((cifar10_dir / "test" / "cat").glob("*.jpg"))[:len(EVIL_GOOD_NAMES) + 3]
    for name, src in zip(EVIL_GOOD_NAMES, jpeg_sources):
        good.append(_save_as(src, photos / name))
    # wrong extensions that still hold images: Pillow reads the content, not the name
    good.append(_save_as(jpeg_sources[3], photos / "png_inside.jpg", "PNG"))
    good.append(_save_as(jpeg_sources[4], photos / "jpeg_inside.png", "JPEG"))
    good.append(_save_as(jpeg_sources[5], photos / "more" / "UPPER.JPEG", "JPEG"))
    ignored = photos / "notes.txt"
    shutil.copyfile(jpeg_sources[0], ignored)  # an image by content, but not by name: not picked up
    (photos / "more" / "loop").symlink_to("..")  # a folder loop: scanned once, nothing counted twice
    bad = plant_fixed_bad_files(photos, jpeg_sources[0].read_bytes(), EVIL_BAD_NAME)
    run = root / "run"
    with no_hang(300, "imgclust cluster of the mixed folder"):
        code = main(["cluster", str(photos), "-k", "3", "--out", str(run), "--cache-dir", str(root / "cache"),
                     "--workers", "1", "--batch-size", "16", "-q"])
    assert code == 0, "the mixed folder must cluster"
    return MixedRun(photos, run, root / "cache", [str(p) for p in good], {str(p): k for p, k in bad.items()},
                    [str(ignored)])


def _save_as(src: Path, dst: Path, fmt: str | None = None) -> Path:
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    if fmt is None:
        shutil.copyfile(src, dst)
    else:
        with Image.open(src) as image:
            image.save(dst, format=fmt)
    return dst


def epochs_logged(run: Path) -> int:
    """Epochs a training run has finished so far (lines of its train_log.jsonl)."""
    try:
        return len((run / "train_log.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0
