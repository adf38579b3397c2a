"""`edge-runtime demo` end to end: converter-built BlazeFace package, a clip from real photos, the pipeline."""

from __future__ import annotations

import re

import cv2
import pytest

from edge_runtime.cli import main
from edge_runtime.commands.demo import cache_dir, make_clip
from edge_runtime.errors import SignatureError
from edge_runtime.package import RELEASE, TrustStore, load_package


def test_clip_is_a_real_video_of_the_sample_photos(tmp_path) -> None:
    clip = make_clip(tmp_path / "clip.avi", frames=10)
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while (item := cap.read())[0]:
        frames.append(item[1])
    assert len(frames) == 10 and frames[0].shape == (480, 640, 3)
    assert cv2.absdiff(frames[0], frames[1]).mean() > 1.0  # it pans/zooms
    assert not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_demo_command_detects_the_astronauts_face(capsys) -> None:
    assert main(["demo", "--frames", "20"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^frame +(\d+) +(\d+) face", out, flags=re.M)
    assert [int(i) for i, _ in rows] == list(range(20))
    assert int(rows[0][1]) >= 1  # the first photo is the astronaut: one face
    assert "20 processed of 20 captured" in out and "end_to_end" in out
    pkg = cache_dir() / "blazeface-x86-laptop"
    trust = TrustStore.from_paths([cache_dir() / "keys" / "demo-release.pub"], [RELEASE])
    assert load_package(pkg, trust).signer  # signed with the demo's own key, which it trusts explicitly
    with pytest.raises(SignatureError, match="untrusted key"):
        load_package(pkg)  # and nothing else trusts it by default


def test_demo_signs_a_cached_package_with_its_own_key_and_runs_it_trusted(tmp_path, monkeypatch, capsys) -> None:
    """The build is skipped (a package is already cached, unsigned as an older demo left it): the demo creates its
    key, signs the package, and runs it with only that key trusted."""
    import shutil

    from tests.model_factory import blazeface_package

    monkeypatch.setenv("EDGE_RUNTIME_CACHE", str(tmp_path / "cache"))
    cached = cache_dir() / "blazeface-x86-laptop"
    shutil.copytree(blazeface_package(tmp_path / "bf").root, cached)
    (cached / "signature.json").unlink()
    assert main(["demo", "--frames", "5"]) == 0
    captured = capsys.readouterr()
    assert "created the demo signing key" in captured.err and "5 processed of 5 captured" in captured.out
    trust = TrustStore.from_paths([cache_dir() / "keys" / "demo-release.pub"], [RELEASE])
    assert load_package(cached, trust).signer
    assert oct((cache_dir() / "keys" / "demo-release.key").stat().st_mode & 0o777) == "0o600"
