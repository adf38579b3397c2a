"""Models users bring: real pretrained models shipped inside PyPI packages, and real inputs for them.

Used by the tests of the converter on models the rest of the suite never saw and by
``benchmarks/converter_figures.py``. Model files are found through the import system without importing the
packages. Inputs are real: files of known types (magika), photos that ship with scikit-image (BlazeFace), speech
spoken by espeak-ng (Silero VAD, openWakeWord), nothing downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConversionError, MissingDependencyError


def package_file(package: str, relative: str, pip_name: str | None = None) -> Path:
    """A data file inside an installed package (the package itself is not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{pip_name or package} (a pretrained model)", "dev")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ConversionError(f"{pip_name or package} is installed but {relative} is missing from it")
    return path


# ---- magika: a byte-level file-type classifier (ONNX, int32 input [1, 2048], 214 classes)

MAGIKA_MODEL = "models/standard_v3_3/model.onnx"


def magika_config() -> dict:
    return json.loads(package_file("magika", "models/standard_v3_3/config.min.json").read_text())


def magika_features(path: Path, cfg: dict) -> np.ndarray:
    """The model's input for a file, as magika makes it: the first ``beg_size`` bytes of the first block after
    leading whitespace, then the last ``end_size`` of the last block before trailing whitespace, padded."""
    data = path.read_bytes()
    block, pad = cfg["block_size"], cfg["padding_token"]
    beg = list(data[:block].lstrip()[: cfg["beg_size"]])
    end = list(data[-block:].rstrip()[-cfg["end_size"] :]) if data else []
    beg = beg + [pad] * (cfg["beg_size"] - len(beg))
    end = [pad] * (cfg["end_size"] - len(end)) + end
    return np.asarray(beg + end, dtype=np.int32)


def magika_dataset(roots: Sequence[Path], per_type: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Real files of known types found under ``roots`` (site-packages): Python, JSON, text, Markdown, PNG, ELF."""
    by_suffix = {".py": "python", ".json": "json", ".txt": "txt", ".md": "markdown", ".png": "png", ".so": "elf"}
    rng = np.random.default_rng(seed)
    cfg = magika_config()
    xs, ys = [], []
    for suffix, label in by_suffix.items():
        files = sorted({p for r in roots for p in Path(r).rglob(f"*{suffix}") if p.is_file() and p.stat().st_size > 64})
        picked = [files[i] for i in rng.permutation(len(files))[:per_type]]
        xs += [magika_features(p, cfg) for p in picked]
        ys += [label] * len(picked)
    return np.stack(xs), ys


# ---- speech for the audio models: espeak-ng, 16 kHz mono


def speak(text: str, out: Path, speed: int = 150) -> np.ndarray:
    """``text`` spoken by espeak-ng, as float32 samples at 16 kHz in [-1, 1]."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MissingDependencyError("espeak-ng (apt install espeak-ng: speech for the audio models)", "dev")
    subprocess.run([exe, "-s", str(speed), "-w", str(out), text], check=True, capture_output=True, timeout=60)
    with wave.open(str(out)) as w:
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0
    return np.interp(np.arange(0, len(x), rate / 16000), np.arange(len(x)), x).astype(np.float32)


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # float32, 16 kHz
    voiced: np.ndarray  # bool per sample: inside a spoken phrase


def speech_with_pauses(phrases: Sequence[str], work: Path, pause_s: float = 0.6, seed: int = 0) -> Speech:
    """Phrases spoken one after another with quiet, slightly noisy pauses between: a stream with known speech."""
    rng = np.random.default_rng(seed)
    parts, voiced = [], []
    for i, text in enumerate(phrases):
        quiet = rng.normal(0, 0.003, int(pause_s * 16000)).astype(np.float32)
        spoken = speak(text, work / f"phrase{i}.wav")
        parts += [quiet, spoken]
        voiced += [np.zeros(quiet.size, bool), np.abs(spoken) > 0.02]
    return Speech(np.concatenate(parts), np.concatenate(voiced))


def windows(samples: np.ndarray, size: int, hop: int) -> np.ndarray:
    n = (len(samples) - size) // hop + 1
    return np.stack([samples[k * hop : k * hop + size] for k in range(n)])
