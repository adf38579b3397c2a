"""The embedding API on real packages: predictions, int8, state, verification before load, bad input."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.api import load
from edge_runtime.errors import BackendError, ConfigError, InputError, PackageError, SignatureError
from edge_runtime.package import generate_keypair
from edge_runtime.package.signing import TrustStore, load_private_key
from edge_runtime.package.store import Package, pack_archive
from edge_runtime.preprocess import ImagePreprocessor
from edge_runtime.quant import dequantize
from tests.model_factory import classifier_package, factory_key, factory_trust, sample_frames, stateful_package


def _copy(pkg: Package, dest: Path) -> Path:
    return Path(shutil.copytree(pkg.root, dest))


def test_onnx_classifier_prediction_matches_a_direct_session(tiny_onnx_package: Package) -> None:
    import onnxruntime as ort

    frame = sample_frames(1, hw=(120, 160), seed=7)[0]
    with load(tiny_onnx_package, trust=factory_trust()) as model:
        pred = model.predict(frame)
        assert (model.name, model.version, model.backend) == ("tiny", "1.0.0", "onnxruntime")
    x, _ = ImagePreprocessor(tiny_onnx_package.manifest.inputs[0], "BGR")(frame)
    probs = ort.InferenceSession(str(tiny_onnx_package.model_path)).run(None, {"input": x})[0][0]
    assert pred.task == "classification" and len(pred.classes) == 3
    assert pred.top is not None and pred.top.index == int(np.argmax(probs))
    assert pred.top.label == "abc"[pred.top.index]
    np.testing.assert_allclose([c.score for c in pred.classes], np.sort(probs)[::-1], rtol=1e-5)
    assert pred.timings.inference_ms > 0 and pred.timings.total_ms >= pred.timings.inference_ms


def test_int8_tflite_outputs_are_dequantized_exactly(tiny_tflite_package: Package) -> None:
    from ai_edge_litert.interpreter import Interpreter

    spec = tiny_tflite_package.manifest.outputs.tensors[0]
    assert spec.dtype == "int8" and spec.quantization is not None
    frame = sample_frames(1, hw=(50, 70), seed=3)[0]
    it = Interpreter(model_path=str(tiny_tflite_package.model_path))
    it.allocate_tensors()
    x, _ = ImagePreprocessor(tiny_tflite_package.manifest.inputs[0], "BGR")(frame)
    assert x.dtype == np.int8  # normalisation folded into quantization, no float input
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    q = it.get_tensor(it.get_output_details()[0]["index"])[0]
    scale, zp = spec.quantization.scale[0], spec.quantization.zero_point[0]
    with load(tiny_tflite_package, trust=factory_trust()) as model:
        pred = model.predict(frame)
        raw = model.predict_tensors([x])[0]
    np.testing.assert_array_equal(raw[0], q)
    by_index = {c.index: c.score for c in pred.classes}
    for i, v in enumerate(q):
        assert by_index[i] == pytest.approx(scale * (int(v) - zp), abs=1e-7)
    np.testing.assert_allclose(dequantize(q, spec.quantization), [scale * (int(v) - zp) for v in q], atol=1e-7)


def test_stateful_model_feeds_state_back_and_resets(tmp_path: Path) -> None:
    with load(stateful_package(tmp_path / "sum"), trust=factory_trust()) as model:
        assert model.input_spec.name == "x"
        totals = [model.predict(np.array([[1.0, 2.0]], np.float32)).raw["total"] for _ in range(4)]
        np.testing.assert_allclose(np.concatenate(totals), [[1, 2], [2, 4], [3, 6], [4, 8]])
        model.reset_state()
        np.testing.assert_allclose(model.predict(np.array([5.0, 5.0], np.float32)).raw["total"], [[5, 5]])
        # invoke: every input explicit, the stream state untouched
        out = model.invoke([np.ones((1, 2), np.float32), np.full((1, 2), 10, np.float32)])
        np.testing.assert_allclose(out[0], [[11, 11]])
        np.testing.assert_allclose(model.predict_tensors([np.zeros((1, 2), np.float32)])[0], [[5, 5]])


def test_tampered_model_is_refused_by_hash_before_it_is_opened(tiny_onnx_package: Package, tmp_path: Path) -> None:
    root = _copy(tiny_onnx_package, tmp_path / "pkg")
    model_file = root / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes: still parseable by a lenient reader
    model_file.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="sha256"):
        load(root, trust=factory_trust())
    (root / "model.onnx").unlink()
    with pytest.raises(PackageError, match="missing model.onnx"):
        load(root, trust=factory_trust())


def test_signature_is_required_when_keys_are_trusted(tmp_path: Path) -> None:
    priv, pub = generate_keypair(tmp_path / "keys" / "vendor")
    _, other_pub = generate_keypair(tmp_path / "keys" / "other")
    trust = TrustStore.from_paths([pub])
    unsigned = classifier_package(tmp_path / "unsigned")
    (unsigned.root / "signature.json").unlink()
    with pytest.raises(SignatureError, match="not signed"):
        load(unsigned, trust=trust)
    signed = classifier_package(tmp_path / "signed", sign_key=load_private_key(priv))
    with pytest.raises(SignatureError, match="untrusted"):
        load(signed, trust=TrustStore.from_paths([other_pub]))
    with load(signed, trust=trust) as model:
        assert model.package.signer is not None
        assert model.predict(sample_frames(1)[0]).top is not None


def test_unsigned_packages_are_refused_by_default_and_say_how_to_sign(tmp_path: Path) -> None:
    unsigned = classifier_package(tmp_path / "unsigned")
    (unsigned.root / "signature.json").unlink()
    with pytest.raises(SignatureError, match="not signed.*edge-runtime keygen.*edge-runtime sign.*--trust"):
        load(unsigned)
    with load(unsigned, allow_unsigned=True) as model:  # the explicit opt-out: hashes still checked
        assert model.package.signer is None
    (unsigned.root / "model.onnx").write_bytes(b"swapped")
    with pytest.raises(PackageError, match="size|sha256"):
        load(unsigned, allow_unsigned=True)


def test_a_signed_package_without_trusted_keys_is_refused(tiny_onnx_package: Package) -> None:
    with pytest.raises(SignatureError, match="untrusted key.*--trust"):
        load(tiny_onnx_package)


def test_archive_packages_load_too(tiny_onnx_package: Package, tmp_path: Path) -> None:
    archive = pack_archive(tiny_onnx_package.root, tmp_path / "tiny.erpkg")
    frame = sample_frames(1, seed=5)[0]
    with load(archive, trust=factory_trust()) as a, load(tiny_onnx_package, trust=factory_trust()) as b:
        assert a.predict(frame).top == b.predict(frame).top


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((32, 32, 2), np.uint8),  # two channels
        np.zeros((32, 32, 5), np.uint8),  # five channels
        np.zeros((32, 32, 3), np.float32),  # not 8-bit
        np.zeros((0, 0, 3), np.uint8),  # empty
        np.zeros((1, 1, 3), np.uint8),  # too small to resize
        np.zeros((4, 32, 32, 3), np.uint8),  # a batch, not a frame
    ],
    ids=["2ch", "5ch", "float", "empty", "1x1", "4d"],
)
def test_bad_frames_are_input_errors(tiny_onnx_package: Package, frame: np.ndarray) -> None:
    with load(tiny_onnx_package, trust=factory_trust()) as model, pytest.raises(InputError):
        model.predict(frame)


def test_wrong_sensor_window_is_an_input_error(sensor_package: Package) -> None:
    with load(sensor_package, trust=factory_trust()) as model:
        assert model.predict(np.zeros((16, 3))).top is not None
        with pytest.raises(InputError, match="expects shape"):
            model.predict(np.zeros((15, 3)))
        with pytest.raises(InputError, match="expects shape"):
            model.predict(np.zeros((16, 4)))
        with pytest.raises(InputError):
            model.predict_tensors([np.zeros((1, 16, 3), np.float32), np.zeros((1, 16, 3), np.float32)])


def test_frame_order_and_bgra_frames(tiny_tflite_package: Package) -> None:
    bgr = sample_frames(1, seed=11)[0]
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    bgra = np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    with load(tiny_tflite_package, trust=factory_trust()) as model:
        want = model.predict(bgr).classes
        assert model.predict(rgb, frame_order="RGB").classes == want
        assert model.predict(bgra).classes == want


def test_shared_model_is_safe_across_threads(tiny_tflite_package: Package) -> None:
    frames = sample_frames(6, seed=2)
    with load(tiny_tflite_package, trust=factory_trust()) as model:
        want = [model.predict(f).classes for f in frames]
        results: dict[int, list] = {}

        def work(t: int) -> None:
            results[t] = [model.predict(f).classes for f in frames * 5]

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for got in results.values():
        assert got == want * 5


def test_closed_model_refuses_to_predict(tiny_onnx_package: Package) -> None:
    model = load(tiny_onnx_package, trust=factory_trust())
    model.close()
    model.close()
    with pytest.raises(BackendError, match="closed"):
        model.predict(sample_frames(1)[0])


def test_manifest_that_disagrees_with_the_model_is_refused(tmp_path: Path) -> None:
    from edge_runtime.package.store import finalize_package, read_manifest

    root = _copy(classifier_package(tmp_path / "src"), tmp_path / "pkg")
    manifest, _ = read_manifest(root)
    data = manifest.model_dump(mode="json")
    data["outputs"]["tensors"][0]["name"] = "logits_renamed"
    data["outputs"]["decoding"]["output"] = "logits_renamed"
    finalize_package(root, data, factory_key())
    with pytest.raises(PackageError, match="logits_renamed"):
        load(root, trust=factory_trust())


@pytest.mark.parametrize("threads", [0, -2])
def test_thread_counts_below_one_are_refused(tiny_onnx_package: Package, threads: int) -> None:
    """0 used to mean "the profile's count" silently and -2 reached the backend."""
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        load(tiny_onnx_package, threads=threads, trust=factory_trust())
