"""`edge-runtime run` end to end: stdin and video through real subprocesses, SIGTERM, bad inputs, detections."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from edge_runtime.cli import main
from tests.model_factory import factory_pub, trust_args
from tests.sources.media import MjpegServer, write_numbered_video, write_video

CLI = [sys.executable, "-m", "edge_runtime.cli"]


def test_stdin_source_through_the_cli(packages) -> None:
    rows = "\n".join(f"{i},{i * 2},{-i}" for i in range(16)) + "\nnot,a,number\n"
    proc = subprocess.run(
        [*CLI, "run", "--package", str(packages["sensor"]), *trust_args(), "--source", "stdin", "--window-hop", "4"],
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
        [*CLI, "run", "--package", str(packages["classifier"]), *trust_args(), "--source", server.url],
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


def test_a_reader_that_goes_away_ends_an_endless_run_cleanly(packages) -> None:
    """Given `run ... | head -1` on an endless camera, when the reader closes the pipe, then the run stops by itself
    with exit 0 and one warning, not a traceback per result and a run that never ends."""
    server = MjpegServer(fps=30).start()
    proc = subprocess.Popen([*CLI, "run", "--package", str(packages["classifier"]), *trust_args(),
                             "--source", server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert json.loads(proc.stdout.readline())["task"] == "classification"
        proc.stdout.close()  # the reader goes away
        proc.wait(timeout=30)  # (stderr holds a few lines: no risk of a full pipe blocking the process)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "broken pipe" in err and "processed" in err


def test_out_file_and_bounds(packages, tmp_path: Path, capsys) -> None:
    video = write_numbered_video(tmp_path / "clip.avi", count=12)
    out = tmp_path / "results.jsonl"
    code = main(["run", "--package", str(packages["classifier"]), *trust_args(),
                 "--source", str(video), "--out", str(out),
                 "--max-frames", "5"])  # fmt: skip
    assert code == 0
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert "5 processed of" in capsys.readouterr().err


def assert_one_error_line(err: str, message: str) -> None:
    """Nothing ran, so no summary: the error is the only line on stderr."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("edge-runtime: error: ") and message in err, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "7"], "cannot open camera 7"),
        (["--source", "/dev/video99"], "cannot open camera /dev/video99"),
        (["--source", "missing.mp4"], "video file missing.mp4 does not exist"),
        (["--source", "data.csv", "--motion-gate", "0.1"], "--motion-gate works with camera and video"),
        (["--source", "0", "--max-frames", "0"], "--max-frames must be at least 1"),
        (["--source", "ftp://x/y"], "unsupported source scheme"),
        (["--source", "0", "--fps-limit", "0"], "--fps-limit must be positive"),
        (["--source", "0", "--threads", "0"], "--threads must be at least 1"),
        (["--source", "0", "--save-detections", "d", "--clip-frames", "-1"], "--clip-frames must be 0"),
    ],
)
def test_user_mistakes_are_one_line_errors(packages, capfd, extra, message) -> None:
    code = main(["run", "--package", str(packages["classifier"]), *trust_args(), *extra])
    assert code == 2
    assert_one_error_line(capfd.readouterr().err, message)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("serial:/dev/ttyNOPE0", "cannot open serial port /dev/ttyNOPE0: it does not exist"),
        ("missing.csv", "sensor file missing.csv does not exist"),
        ("udp://127.0.0.1:99999", "Port out of range"),
    ],
)
def test_sensor_sources_that_cannot_be_opened_are_one_line(packages, capfd, source, message) -> None:
    assert main(["run", "--package", str(packages["sensor"]), *trust_args(), "--source", source]) == 2
    assert_one_error_line(capfd.readouterr().err, message)


def test_unreadable_streams_and_videos_are_one_line_without_ffmpeg_noise(packages, tmp_path: Path) -> None:
    """A fresh process: FFmpeg writes to file descriptor 2 itself, and only once it is set up the way `run` does."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/stream.mjpg"
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video")
    runs = [["run", "--package", str(packages["classifier"]), *trust_args(),
             "--source", src] for src in (url, str(fake))]
    code = f"import sys; from edge_runtime.cli import main; print([main(a) for a in {runs!r}])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[2, 2]", proc.stderr
    assert proc.stderr == f"edge-runtime: error: cannot open stream {url}\n" \
                          f"edge-runtime: error: cannot open video file {fake}\n"  # fmt: skip


def test_outputs_that_cannot_be_written_are_one_line(packages, tmp_path: Path, capfd) -> None:
    video = write_numbered_video(tmp_path / "clip.avi", count=2)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    base = ["run", "--package", str(packages["classifier"]), *trust_args(), "--source", str(video)]
    assert main([*base, "--out", str(tmp_path)]) == 2
    assert_one_error_line(capfd.readouterr().err, f"cannot write {tmp_path}: Is a directory")
    assert main([*base, "--out", str(tmp_path / "r.jsonl"), "--save-detections", str(afile)]) == 2
    assert_one_error_line(capfd.readouterr().err, f"cannot save detections in {afile}")


def test_key_option_naming_no_key_does_not_skip_the_signature_check(packages, tmp_path: Path, capfd) -> None:
    empty = tmp_path / "keys"
    empty.mkdir()
    assert main(["run", "--package", str(packages["classifier"]), "--source", "0", "--trust", str(empty)]) == 2
    assert_one_error_line(capfd.readouterr().err, "no public key (.pub) found there")


def test_the_run_path_imports_no_training_framework_or_converter(packages, tmp_path: Path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("\n".join(f"{i},{i},{i}" for i in range(8)) + "\n")
    code = (
        "import sys; from edge_runtime.cli import main;"
        f"rc = main(['run', '--package', {str(packages['sensor'])!r}, '--trust', {str(factory_pub())!r},"
        f" '--source', {str(csv)!r}, '--no-summary']);"
        "bad = [m for m in ('tensorflow', 'torch', 'keras', 'converters', 'jax') if m in sys.modules];"
        "print('RC', rc, 'HEAVY', ','.join(bad), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "RC 0 HEAVY \n" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["task"] == "raw"


def test_sensor_source_with_an_image_model_is_refused(packages, tmp_path: Path, capsys) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("1,2,3\n")
    assert main(["run", "--package", str(packages["classifier"]), *trust_args(), "--source", str(csv)]) == 2
    assert "needs a model with a tensor input" in capsys.readouterr().err


def test_detections_are_saved_annotated_and_bounded(blazeface_pkg, tmp_path: Path, capsys) -> None:
    face = cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (320, 320))
    video = write_video(tmp_path / "faces.avi", [face] * 6)
    out_dir = tmp_path / "detections"
    code = main(["run", "--package", str(blazeface_pkg), *trust_args(),
                 "--source", str(video), "--out", str(tmp_path / "r.jsonl"),
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
    assert main(["run", "--package", str(blazeface_pkg), *trust_args(), "--source", str(video), "--out", os.devnull,
                 "--save-detections", str(out_dir), "--clip-frames", "3", "--max-saved", "1"]) == 0  # fmt: skip
    clips = list(out_dir.glob("*.avi"))
    assert len(clips) == 1
    cap = cv2.VideoCapture(str(clips[0]))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 3


def test_a_stream_that_stops_sending_ends_the_run_with_one_line_and_exit_2(packages) -> None:
    """Given a camera that sends a few frames and then hangs (connections stay open, nothing comes), the run ends
    by itself after --stall-timeout with one clear line and exit 2, not reconnecting forever with exit 0."""
    server = MjpegServer(fps=30, stall_after=3).start()
    try:
        proc = subprocess.run(
            [*CLI, "run", "--package", str(packages["classifier"]), *trust_args(), "--source", server.url,
             "--stall-timeout", "2"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        server.stop()
    assert proc.returncode == 2, proc.stderr
    assert "yielded no sample for 2 s" in proc.stderr and "Traceback" not in proc.stderr
    assert 1 <= len(proc.stdout.splitlines()) <= 3  # frames it sent were processed (OpenCV's probe eats some)


def test_a_run_whose_every_line_is_rejected_exits_2(packages) -> None:
    rows = "\n".join(f"{i},x,{i}" for i in range(200)) + "\n"
    proc = subprocess.run(
        [*CLI, "run", "--package", str(packages["sensor"]), *trust_args(), "--source", "stdin"],
        input=rows, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "nothing processed: 200 bad line(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_run_broker_tls_and_credential_options_reach_the_mqtt_settings(tmp_path, monkeypatch) -> None:
    """--mqtt-ca/-cert/-key/-username/-password-file (or the environment) fill the broker settings; the password
    never has to sit in the URL."""
    from edge_runtime.cli import build_parser
    from edge_runtime.commands.run import device_config

    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    files = {n: tmp_path / f"{n}.pem" for n in ("ca", "cert", "key")}
    for f in files.values():
        f.write_text("-----BEGIN CERTIFICATE-----\n")
    argv = ["run", "--package", "p", "--source", "0", "--mqtt", "mqtts://broker:8883", "--device-id", "cam-1",
            "--outbox", str(tmp_path / "o.db"), "--mqtt-ca", str(files["ca"]), "--mqtt-cert", str(files["cert"]),
            "--mqtt-key", str(files["key"]), "--mqtt-username", "cam-1"]
    mqtt = device_config(build_parser(argv).parse_args([*argv, "--mqtt-password-file", str(pw)])).mqtt
    assert (mqtt.username, mqtt.password, mqtt.tls.ca_cert, mqtt.tls.client_key) == ("cam-1", "s3cret", files["ca"],
                                                                                     files["key"])
    monkeypatch.setenv("EDGE_RUNTIME_MQTT_PASSWORD", "from-env")
    assert device_config(build_parser(argv).parse_args(argv)).mqtt.password == "from-env"
