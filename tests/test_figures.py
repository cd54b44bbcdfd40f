"""Figures, animation and HTML report of a tiny run (issue 5).

The run: LeNet-300-100 pretrained one epoch on 2,000 MNIST images, then
``sws retrain --figures`` for two epochs, ``sws quantize`` and ``sws report``.
The browser test opens the report in headless Chromium (installed by
``tests/setup_browser.sh``) and is skipped, saying why, only where Chromium
cannot be installed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sws.cli import main
from sws.config import PretrainConfig
from sws.viz.figures import (draw_frame, draw_run_figures, make_animation, mixture_from_state,
                         snapshots_are_current, subsample)
from sws.runs.stages import run_pretrain
from sws.format.stats import file_stats
from sws.runs.rundir import RunDir

EPOCHS = 2
SNAP = 1      # then one epoch through the snap: a frame too
FINAL = ("histograms", "layer_sparsity", "training_curves", "mixture")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HERE = Path(__file__).parent


def _data_dir():
    for d in (os.environ.get("SWS_DATA_DIR"), HERE.parent.parent / "shared" / "data" / "mnist",
              HERE.parent / "shared" / "data" / "mnist"):
        if d and any(Path(d).glob("train-images*")):
            return str(d)
    pytest.skip("MNIST not found: set SWS_DATA_DIR to the folder with the IDX files")


def _cli(*args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == 0, f"sws {' '.join(map(str, args))} exited {e.value.code}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = _data_dir()
    path = tmp_path_factory.mktemp("tiny") / "run"
    run_pretrain(RunDir.create(path), PretrainConfig(model="lenet-300-100", epochs=1,
                                                     train_subset=2000), data, quiet=True)
    _cli("retrain", path, "--epochs", EPOCHS, "--snap-epochs", SNAP, "--figures", "--quiet", "--data-dir", data)
    _cli("quantize", path, "--data-dir", data)
    _cli("report", path)
    return path


def _png_ok(path: Path):
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()


def test_frames_are_pngs_one_per_epoch(run):
    frames = sorted((run / "figures" / "frames").glob("epoch_*.png"))
    assert [f.stem for f in frames] == [f"epoch_{e:03d}" for e in range(EPOCHS + SNAP + 1)]
    for f in frames:
        _png_ok(f)
    sizes = {Image.open(f).size for f in frames}
    assert len(sizes) == 1, "frames differ in size"


def test_gif_has_one_frame_per_epoch(run):
    gif = run / "figures" / "animation.gif"
    assert gif.read_bytes()[:6] == b"GIF89a"
    with Image.open(gif) as im:
        assert im.n_frames == EPOCHS + SNAP + 1
        assert im.info.get("loop") == 0


def test_final_figures(run):
    for name in FINAL:
        _png_ok(run / "figures" / f"{name}.png")


def test_retrain_and_run_offer_figures_flag(capsys):
    for cmd in ("retrain", "run"):
        _cli(cmd, "--help")
        assert "--figures" in capsys.readouterr().out


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v) for k, v in attrs if k in ("src", "href", "data", "poster", "srcset")]


def test_report_is_self_contained(run):
    page = (run / "report.html").read_text()
    parser = _Refs()
    parser.feed(page)
    external = [r for r in parser.refs if not r[2].startswith(("data:", "#"))]
    assert not external, f"report references other files: {external}"
    assert not re.search(r"url\(\s*['\"]?(?!data:)", page), "CSS loads an external file"
    assert "script" not in parser.tags
    images = [r for r in parser.refs if r[0] == "img"]
    assert len(images) == 2 + len(FINAL)   # animation, last frame, final figures
    assert "image/gif" in images[0][2]
    metrics = json.loads((run / "metrics.json").read_text())
    for stage in ("pretrained", "retrained", "quantized"):
        assert f"{100 * metrics[stage]['test_accuracy']:.2f}%" in page
    config = json.loads((run / "config.json").read_text())
    assert html.escape(config["retrain"]["command"], quote=False) in page
    assert '"tau": 0.003' in page   # the settings, verbatim


def test_report_gives_size_and_cr_of_sws_file(run, tmp_path):
    sws = run / "model.sws"
    kept = sws.read_bytes() if sws.is_file() else None
    try:
        _cli("compress", run)
        data = sws.read_bytes()
        _cli("report", run, "--out", tmp_path / "r.html")
        page = (tmp_path / "r.html").read_text()
        values = 266_610 + 2  # LeNet-300-100's parameters and its input normalisation's mean and std
        assert f"{len(data):,} bytes" in page
        assert f"<b>{32 * values / (8 * len(data)):.1f}</b>" in page
        assert file_stats(data)["total"]["cr_file"] == pytest.approx(32 * values / (8 * len(data)))
        sws.write_bytes(b"\0" * 4321)
        _cli("report", run, "--out", tmp_path / "bad.html")
        assert "not a readable .sws file" in (tmp_path / "bad.html").read_text()
    finally:
        sws.write_bytes(kept) if kept is not None else sws.unlink()


def test_report_of_missing_folder_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert "no such run folder" in capsys.readouterr().err


# -- the browser check ------------------------------------------------------------------

PROBE = """<script>
window.__errs = [];
window.addEventListener('error', e => __errs.push(String(e.message ||
    (e.target && (e.target.src || e.target.href) || 'error').slice(0, 80))), true);
document.addEventListener('securitypolicyviolation', e => __errs.push('csp ' + e.blockedURI));
const _ce = console.error;
console.error = (...a) => { __errs.push(a.join(' ')); _ce(...a); };
window.addEventListener('load', () => setTimeout(() => {
  const imgs = [...document.images];
  const p = document.createElement('pre'); p.id = 'sws-probe';
  p.textContent = JSON.stringify({images: imgs.length, errors: __errs,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)});
  document.body.appendChild(p);
}, 200));
</script>"""


def _chromium():
    names = ("chromium", "chromium-browser", "google-chrome")
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None:
        subprocess.run(["bash", str(HERE / "setup_browser.sh")], timeout=900)
        found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None:
        pytest.skip("headless Chromium is not installed and tests/setup_browser.sh could not "
                    "install it (apt-get install chromium); the report was not checked in a browser")
    return found


def _open_in_browser(browser, html_file: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load a copy of the page with a probe script; (probe result, console lines)."""
    page = html_file.read_text()
    page = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    page = re.sub(r'(<meta http-equiv="Content-Security-Policy"[^>]*>)', lambda m: m.group(1) + PROBE,
                  page, count=1)
    probe_file = tmp_path / "probe.html"
    probe_file.write_text(page)
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", "--dump-dom", probe_file.as_uri()],
        capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="sws-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the page did not finish loading in Chromium (exit {proc.returncode}):\n" \
              f"{proc.stderr[-2000:]}"
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    return json.loads(html.unescape(m.group(1))), console


def test_report_renders_in_chromium(run, tmp_path):
    result, console = _open_in_browser(_chromium(), run / "report.html", tmp_path)
    assert result["images"] == 2 + len(FINAL)
    assert result["broken"] == [], f"images that did not load: {result['broken']}"
    assert result["errors"] == [] and console == [], (result["errors"], console)


def test_browser_check_can_fail(run, tmp_path):
    page = (run / "report.html").read_text().replace(
        "</body>", '<img src="missing.png" alt="missing"></body>')
    bad = tmp_path / "bad.html"
    bad.write_text(page)
    result, console = _open_in_browser(_chromium(), bad, tmp_path)
    assert result["broken"] == ["missing"]
    assert result["errors"]


# -- drawing on synthetic weights -------------------------------------------------------

def test_frame_subsamples_scatter_and_animation_keeps_frames(tmp_path):
    rng = np.random.default_rng(0)
    pre = rng.normal(0, 0.05, 50_000)
    mixture = mixture_from_state({"prior.means": np.linspace(-0.2, 0.2, 4),
                                  "prior.log_precisions": np.full(5, 8.0),
                                  "prior.mixing_logits": np.zeros(4), "prior.pi0": np.array(0.9)})
    assert mixture["pis"].sum() == pytest.approx(1.0)
    assert mixture["means"][0] == 0 and mixture["stds"][0] == pytest.approx(np.exp(-4.0))
    idx = subsample(pre.size, 1000)
    assert idx.size == 1000 and np.all(np.diff(idx) > 0)
    frames = [draw_frame(pre, pre * (1 - t), mixture, tmp_path / f"epoch_{i:03d}.png",
                         title=f"epoch {i}", sample=idx, dpi=40)
              for i, t in enumerate((0.0, 0.5, 1.0))]
    written = make_animation(frames, tmp_path / "a.gif", fps=4)
    with Image.open(written[0]) as im:
        assert im.n_frames == 3


def test_mp4_where_ffmpeg_is_installed(run, tmp_path):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg is not installed: the animation is written as GIF only")
    frames = sorted((run / "figures" / "frames").glob("epoch_*.png"))
    written = make_animation(frames, tmp_path / "a.gif", tmp_path / "a.mp4")
    assert written == [tmp_path / "a.gif", tmp_path / "a.mp4"]
    assert (tmp_path / "a.mp4").read_bytes()[4:8] == b"ftyp"


def test_stale_snapshots_draw_no_frames(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = sorted((copy / "snapshots").glob("epoch_*.safetensors"))[-1]
    shutil.copy(copy / "snapshots" / "epoch_000.safetensors", last)
    assert not snapshots_are_current(copy)
    with pytest.warns(UserWarning, match="earlier retraining"):
        figs = draw_run_figures(copy, tmp_path / "figs")
    assert "final_frame" not in figs and "histograms" in figs
