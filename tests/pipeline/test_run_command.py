"""`edge-runtime run` end to end: stdin and video through real subprocesses, SIGTERM, bad inputs, detections."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from edge_runtime.cli import main
from tests.sources.media import MjpegServer, write_numbered_video, write_video

CLI = [sys.executable, "-m", "edge_runtime.cli"]


def test_stdin_source_through_the_cli(packages) -> None:
    rows = "\n".join(f"{i},{i * 2},{-i}" for i in range(16)) + "\nnot,a,number\n"
    proc = subprocess.run(
        [*CLI, "run", "--package", str(packages["sensor"]), "--source", "stdin", "--window-hop", "4"],
        input=rows, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == (16 - 8) // 4 + 1
    assert lines[0]["raw"]["mean"] == [[3.5, 7.0, -3.5]]
    assert "bad lines 1" in proc.stderr and "p50 ms" in proc.stderr


def test_sigterm_ends_a_run_cleanly_with_a_summary(packages) -> None:
    server = MjpegServer(fps=30).start()  # an endless camera
    proc = subprocess.Popen(
        [*CLI, "run", "--package", str(packages["classifier"]), "--source", server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()  # the run is producing results
        assert json.loads(first)["task"] == "classification"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "processed" in err and "end_to_end" in err


def test_out_file_and_bounds(packages, tmp_path: Path, capsys) -> None:
    video = write_numbered_video(tmp_path / "clip.avi", count=12)
    out = tmp_path / "results.jsonl"
    code = main(["run", "--package", str(packages["classifier"]), "--source", str(video), "--out", str(out),
                 "--max-frames", "5"])  # fmt: skip
    assert code == 0
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert "5 processed of" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "/dev/video99"], "cannot open camera /dev/video99"),
        (["--source", "missing.mp4"], "video file missing.mp4 does not exist"),
        (["--source", "data.csv", "--motion-gate", "0.1"], "--motion-gate works with camera and video"),
        (["--source", "0", "--max-frames", "0"], "--max-frames must be at least 1"),
        (["--source", "ftp://x/y"], "unsupported source scheme"),
    ],
)
def test_user_mistakes_are_one_line_errors(packages, capsys, extra, message) -> None:
    code = main(["run", "--package", str(packages["classifier"]), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().count("\n") == 0 or "error:" in err.strip().splitlines()[-1]


def test_sensor_source_with_an_image_model_is_refused(packages, tmp_path: Path, capsys) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("1,2,3\n")
    assert main(["run", "--package", str(packages["classifier"]), "--source", str(csv)]) == 2
    assert "needs a model with a tensor input" in capsys.readouterr().err


def test_detections_are_saved_annotated_and_bounded(blazeface_pkg, tmp_path: Path, capsys) -> None:
    face = cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (320, 320))
    video = write_video(tmp_path / "faces.avi", [face] * 6)
    out_dir = tmp_path / "detections"
    code = main(["run", "--package", str(blazeface_pkg), "--source", str(video), "--out", str(tmp_path / "r.jsonl"),
                 "--save-detections", str(out_dir), "--max-saved", "4"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(results) == 6 and all(r["detections"] for r in results)
    saved = sorted(out_dir.glob("*.jpg"))
    assert len(saved) == 4
    annotated = cv2.imread(str(saved[0]))
    assert annotated.shape == face.shape
    x1, y1, x2, y2 = (round(v) for v in results[0]["detections"][0]["box"])

    def green_share(img: np.ndarray) -> float:  # the box's bottom edge, where the photo has no green
        band = img[y2 - 1 : y2 + 2, x1 + 3 : x2 - 3].astype(int)
        return float(np.mean((band[..., 1] > 150) & (band[..., 0] < 120) & (band[..., 2] < 120)))

    assert green_share(annotated) > 0.5 and green_share(face) == 0.0
    assert not any(p.name.startswith(".") for p in out_dir.iterdir())


def test_detection_clips(blazeface_pkg, tmp_path: Path) -> None:
    face = cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (256, 256))
    video = write_video(tmp_path / "faces.avi", [face] * 5)
    out_dir = tmp_path / "clips"
    assert main(["run", "--package", str(blazeface_pkg), "--source", str(video), "--out", os.devnull,
                 "--save-detections", str(out_dir), "--clip-frames", "3", "--max-saved", "1"]) == 0  # fmt: skip
    clips = list(out_dir.glob("*.avi"))
    assert len(clips) == 1
    cap = cv2.VideoCapture(str(clips[0]))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 3
