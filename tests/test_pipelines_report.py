"""Tests for pipelines.reporting.report: one self-contained HTML file, checked in a real browser (headless Chromium)."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest

from oneshot.embedder.artifact import load_model
from oneshot.pipelines.jobs import embed_gallery
from oneshot.pipelines.reporting.report import build_report, write_report

IMG = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]*)\"")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
# Injected at the top of a copy of the report: records script errors, failed loads and console errors, and
# after load writes what it saw (images, decoded images, errors) into the DOM that --dump-dom prints.
CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(e.message || ('failed to load ' + ((e.target && (e.target.src || e.target.href)) || '?').slice(0, 80)));
}, true);
console.error = function () { window.__errors.push('console.error: ' + Array.from(arguments).join(' ')); };
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var report = {images: images.length, errors: window.__errors,
                decoded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length};
  var pre = document.createElement('pre');
  pre.id = 'oneshot-check';
  pre.textContent = JSON.stringify(report);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_check(report_path, work_dir) -> tuple[dict, str]:
    """Open a copy of the report (with CHECK_SCRIPT) in headless Chromium -> (what the page saw, stderr)."""
    copy = work_dir / "checked.html"
    copy.write_text(report_path.read_text().replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={work_dir / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=15000", "--dump-dom", copy.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="oneshot-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the check script did not run; chromium exit {result.returncode}: {result.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")), result.stderr


@pytest.fixture(scope="module")
def store(tmp_path_factory, synthetic_gallery, tiny_model_path):
    return embed_gallery(synthetic_gallery, tmp_path_factory.mktemp("report") / "gallery.parquet",
                         load_model(tiny_model_path))


@pytest.fixture(scope="module")
def report(tmp_path_factory, store):
    history = pd.DataFrame({"step": [10, 20, 30], "loss": [2.0, 1.5, 1.2], "val_accuracy": [0.3, np.nan, 0.5]})
    return write_report(store, tmp_path_factory.mktemp("report_out") / "report.html", history=history, episodes=30,
                        n_pairs=200)


def test_report_is_one_self_contained_file(report):
    text = report.read_text()
    for title in ("Training curves", "N-way accuracy", "1:1 verification", "Embedding map", "Clusters",
                  "Nearest neighbours", "Hardest confusions", "Per group"):
        assert f"<h2>{title}</h2>" in text
    sources = IMG.findall(text)
    assert len(sources) >= 9  # curves, accuracy, ROC, distributions, map, clusters, right, wrong, confusions
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 20 and image.shape[1] > 20
    assert not re.search(r"(src|href)=\"(https?:|//)", text)  # nothing fetched from the network
    assert "synth_a01" in text and "synth_a02" in text  # the per-group table


def test_unlabelled_store_gets_clusters_and_a_note(tmp_path, synthetic_gallery, tiny_model_path):
    store = embed_gallery(synthetic_gallery, tmp_path / "u.parquet", load_model(tiny_model_path), labelled=False)
    text = build_report(store, episodes=10)
    assert "<h2>Clusters</h2>" in text and "unlabelled" in text
    assert "<h2>N-way accuracy</h2>" not in text and len(IMG.findall(text)) == 1  # the cluster thumbnails


def test_missing_images_leave_a_note_not_a_crash(store):
    from oneshot.index.store import EmbeddingSet

    moved = EmbeddingSet(store.table, store.embeddings, {**store.metadata, "source": "/nowhere/gallery"})
    text = build_report(moved, episodes=10, n_pairs=100)
    assert "No thumbnails" in text and "<h2>Per group</h2>" in text


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_loads_in_headless_chromium_with_every_image_decoded(report, tmp_path):
    seen, stderr = browser_check(report, tmp_path)
    assert seen["images"] == len(IMG.findall(report.read_text())) >= 9
    assert seen["decoded"] == seen["images"], seen
    assert seen["errors"] == [], seen["errors"]
    assert ":CONSOLE(" not in stderr, stderr[-2000:]


def test_thumbnails_keep_the_aspect_of_wide_images():
    from oneshot.pipelines.reporting.thumbnails import THUMB, thumbnail

    signature = np.full((40, 120), 255, np.uint8)
    signature[10:30, 5:115] = 0  # one wide dark stroke on white paper
    thumb = thumbnail(signature)
    assert thumb.shape == (THUMB, THUMB)
    dark_rows = (thumb < 128).any(axis=1).sum()
    assert dark_rows <= 8  # 20 of 40 rows, shrunk by the same third as the width (a squashed copy keeps 20)
    assert (thumb[:12] == 255).all() and (thumb[-12:] == 255).all()  # paper above and below
    assert (thumb[THUMB // 2] < 128).sum() >= THUMB - 4  # the stroke still spans the width
    assert thumbnail(np.zeros((30, 30, 3), np.uint8)).shape == (THUMB, THUMB)
