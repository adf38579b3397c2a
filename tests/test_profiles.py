import pytest

from edge_runtime.cli import main
from edge_runtime.errors import ProfileError
from edge_runtime.profiles import list_profiles, load_profile

REQUIRED = {"raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "x86-laptop"}


def test_all_builtin_profiles_validate():
    names = set(list_profiles())
    assert REQUIRED <= names
    for name in names:
        p = load_profile(name)
        assert p.name == name
        assert p.formats.preferred in p.formats.allowed


def test_jetson_profiles_prefer_tensorrt_then_cuda_then_cpu():
    eps = load_profile("jetson-orin-nano").backends.onnxruntime.execution_providers
    assert eps == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert load_profile("jetson-nano").quantization.symmetric_activations


def _write(tmp_path, text):
    p = tmp_path / "mine.yaml"
    p.write_text(text)
    return p


def test_unknown_key_is_reported_with_file_and_key(tmp_path):
    text = (load_profile("x86-laptop").model_dump_json())
    import json

    import yaml

    data = json.loads(text)
    data["cpu"]["turbo"] = True
    p = _write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ProfileError) as exc:
        load_profile(p)
    assert str(p) in str(exc.value) and "cpu.turbo" in str(exc.value)


def test_bad_value_is_reported_with_reason(tmp_path):
    import yaml

    data = load_profile("x86-laptop").model_dump(mode="json")
    data["formats"]["preferred"] = "tflite"
    data["formats"]["allowed"] = ["onnx"]
    p = _write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="preferred format 'tflite' is not in allowed"):
        load_profile(p)


def test_user_profile_dir_is_searched_first(tmp_path, monkeypatch):
    import yaml

    data = load_profile("raspberry-pi-4").model_dump(mode="json")
    data["name"] = "my-board"
    data["cpu"]["cores"] = 8
    (tmp_path / "my-board.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("EDGE_RUNTIME_PROFILE_PATH", str(tmp_path))
    assert load_profile("my-board").cpu.cores == 8


def test_cli_profiles(capsys):
    assert main(["profiles", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REQUIRED)
    assert main(["profiles", "show", "raspberry-pi-5"]) == 0
    assert "cortex-a76" in capsys.readouterr().out
    assert main(["profiles", "show", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_not_yaml_mapping(tmp_path):
    with pytest.raises(ProfileError, match="mapping"):
        load_profile(_write(tmp_path, "- a\n- b\n"))
