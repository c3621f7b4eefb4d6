"""4. Untrusted files: nothing a user is handed can run code, inject HTML, or make export write outside --to.

* Pickles that run a shell command when unpickled are planted where imgclust reads files — backbone weights
  (``--weights``, also under a ``.safetensors`` name), a training checkpoint picked up by ``--resume``, the
  saved model of a run (``predict``; ``report`` does not need it and is still written), a ``.npy`` source —
  and each command refuses them with exit 2; the planted command never runs.
  Weights go through safetensors or ``torch.load(weights_only=True)``, arrays through ``allow_pickle=False``.
* ``report.html`` of a folder holding files named like HTML (``<script>…``, ``"><img onerror=…>``) shows
  them as text: every name escaped, no element injected, also after ``imgclust report`` rebuilds it.
* ``imgclust export`` refuses cluster names that leave ``--to`` (``../x``, ``/abs``, ``a/../../b``…) and a
  cluster folder that is a symlink to elsewhere; nothing is written outside ``--to``.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness_support import (  # noqa: F401 (robustness_summary is an autouse fixture)
    EVIL_BAD_NAME,
    EVIL_GOOD_NAMES,
    MixedRun,
    copy_cifar,
    digits_embeddings,
    mixed_run,
    record,
    robustness_summary,
    run_cli,
    tree,
)


class RunsCode:
    """Unpickling this runs ``touch MARKER`` (a stand-in for a malicious file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "code-ran"
    yield path
    assert not path.exists(), "a planted pickle ran its code"


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["evil.pth", "evil.safetensors"])
def test_malicious_weights_refused(name: str, marker: Path, tmp_path: Path, cifar10_dir: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    photos = tmp_path / "photos"
    copy_cifar(cifar10_dir, photos, 2, ["cat", "ship"])
    weights = tmp_path / name
    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsCode(marker)}, weights)
    code, text = run_cli(["cluster", photos, "-k", "2", "--backbone", "resnet18", "--weights", weights,
                          "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "-q"], capsys)
    assert code == 2 and str(weights) in text and "fix:" in text, text
    record("bad input", f"malicious pickle as --weights ({Path(name).suffix})")


def _icbpl_run(tmp_path: Path, capsys: pytest.CaptureFixture, out: Path, *extra: str) -> tuple[int, str]:
    return run_cli(["cluster", digits_embeddings(tmp_path / "digits.npz", 120), "-k", "4", "--method", "icbpl",
                    "--set", "epochs=2", "--set", "batch_size=40", "--set", "latent_dim=8", "--set", "hidden_dim=16",
                    "--set", "n_neighbors=3", "--out", out, "--no-report", "-q", *extra], capsys)


def test_malicious_checkpoint_refused_on_resume(marker: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                single_thread: None) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"format": "imgclust-train", "version": 1, "payload": RunsCode(marker)},
               out / "checkpoints" / "last.pt")
    code, text = _icbpl_run(tmp_path, capsys, out, "--resume")
    assert code == 2 and "cannot read training checkpoint" in text and "fix:" in text, text
    record("bad input", "malicious pickle as a training checkpoint (--resume)")


def test_malicious_model_file_refused_by_predict_and_report(marker: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture,
                                                            single_thread: None) -> None:
    out = tmp_path / "run"
    code, text = _icbpl_run(tmp_path, capsys, out)
    assert code == 0, text
    torch.save({"net.weight": torch.zeros(1), "payload": RunsCode(marker)}, out / "model.safetensors")
    code, text = run_cli(["predict", out, tmp_path / "digits.npz", "-q"], capsys)
    assert code == 2 and "cannot read the saved model" in text and "fix:" in text, text
    (out / "report.html").unlink(missing_ok=True)
    code, text = run_cli(["report", out, "-q"], capsys)  # the report does not need the model: still written
    assert code == 0 and (out / "report.html").exists(), text
    record("bad input", "malicious pickle as a run's model.safetensors (predict, report)", 2)


def test_pickled_array_source_refused(marker: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "evil.npy"
    np.save(source, np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    code, text = run_cli(["cluster", source, "-k", "2", "--out", tmp_path / "run", "-q"], capsys)
    assert code == 2 and "pickled Python objects" in text, text
    record("bad input", "pickled .npy as the source")


@pytest.fixture
def mixed(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path) -> MixedRun:
    return mixed_run(tmp_path_factory, cifar10_dir)


class _Elements(HTMLParser):
    """Every start tag of a page, as the browser's parser sees it: (tag, {attribute: value})."""

    def __init__(self, text: str):
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def _check_escaped(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    for name in EVIL_GOOD_NAMES + [EVIL_BAD_NAME]:
        assert name not in text                          # never raw
        assert html.escape(name, quote=True) in text     # shown as text (the bad one in the skipped list)
    elements = _Elements(text).found
    assert [tag for tag, _ in elements].count("script") == 1  # the report's own check only
    assert not [(tag, a) for tag, attrs in elements for a in attrs if a.lower().startswith("on")]  # no handler
    assert all(attrs["src"].startswith("data:image/") for tag, attrs in elements if tag == "img")
    assert "default-src 'none'" in text                  # and a CSP as a second wall


@pytest.mark.shared_data
def test_report_escapes_file_names(mixed: MixedRun, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _check_escaped(mixed.run / "report.html")
    rebuilt = tmp_path / "run"
    shutil.copytree(mixed.run, rebuilt)
    code, text = run_cli(["report", rebuilt, "-q", "--map", "pca"], capsys)
    assert code == 0, text
    _check_escaped(rebuilt / "report.html")
    record("bad input", "HTML-like file name in report.html", 2 * (len(EVIL_GOOD_NAMES) + 1))


@pytest.mark.shared_data
@pytest.mark.parametrize("bad_name", ["../escape", "/tmp/absolute", "a/../../b", "..", "sub/dir", "x\u0000y"])
def test_export_refuses_names_that_leave_the_destination(bad_name: str, mixed: MixedRun, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "work"
    work.mkdir()
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "fine", "1": bad_name}))
    before = tree(tmp_path)
    code, text = run_cli(["export", mixed.run, "--to", work / "sorted", "--names", names, "-q"], capsys)
    assert code == 2 and "fix:" in text, text
    after = tree(tmp_path)
    assert {p for p in after if p not in before} <= {"work/sorted"}  # at most the empty --to itself
    assert not Path("/tmp/absolute").exists()
    record("bad input", "export cluster name leaving --to")


@pytest.mark.shared_data
def test_export_refuses_a_symlinked_cluster_folder(mixed: MixedRun, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    outside, to = tmp_path / "outside", tmp_path / "sorted"
    outside.mkdir()
    to.mkdir()
    (to / "cluster_00").symlink_to(outside)
    code, text = run_cli(["export", mixed.run, "--to", to, "-q"], capsys)
    assert code == 2 and "outside" in text and "fix:" in text, text
    assert list(outside.iterdir()) == []
    record("bad input", "export into a cluster folder that links elsewhere")


@pytest.mark.shared_data
def test_export_of_html_like_names_stays_inside(mixed: MixedRun, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    to = tmp_path / "sorted"
    code, text = run_cli(["export", mixed.run, "--to", to, "--mode", "copy", "-q"], capsys)
    assert code == 0, text
    exported = sorted(p.name for p in to.rglob("*") if p.is_file())
    assert sorted(exported) == sorted(Path(p).name for p in mixed.good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sorted"]
    record("bad input", "HTML-like file name exported", len(EVIL_GOOD_NAMES))
