import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_runtime.package.manifest import Manifest, parse_semver
from tests.package.helpers import manifest_fields


def _with_files(fields):
    fields = dict(fields)
    fields["files"] = [
        {"path": "model.onnx", "sha256": "0" * 64, "size": 1},
        {"path": "golden.npz", "sha256": "1" * 64, "size": 1},
    ]
    return fields


def test_valid_manifest_roundtrips_through_json():
    m = Manifest.model_validate(_with_files(manifest_fields()))
    assert Manifest.model_validate_json(m.model_dump_json()) == m


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 2}, "schema_version"),
        ({"version": "1.0"}, "semantic version"),
        ({"model_file": "other.onnx"}, "not listed"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_manifests_are_rejected(change, message):
    fields = _with_files(manifest_fields())
    fields.update(change)
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(fields)


def test_a_newer_writers_informational_block_is_ignored_only_when_declared_optional():
    fields = _with_files(manifest_fields())
    fields.update(lineage_v9={"anything": [1, 2]}, optional_blocks=["lineage_v9"])
    m = Manifest.model_validate(fields)
    assert m.optional_blocks == ("lineage_v9",) and "lineage_v9" not in m.model_dump()
    fields.update(surprise=1)  # not declared optional: still refused
    with pytest.raises(ValidationError, match="Extra inputs"):
        Manifest.model_validate(fields)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a//b", "a/./b", "a\\b"])
def test_unsafe_file_paths_are_rejected(path):
    fields = _with_files(manifest_fields())
    fields["files"].append({"path": path, "sha256": "2" * 64, "size": 1})
    with pytest.raises(ValidationError, match="unsafe"):
        Manifest.model_validate(fields)


def test_int8_input_requires_quantization():
    fields = _with_files(manifest_fields())
    fields["inputs"][0]["dtype"] = "int8"
    with pytest.raises(ValidationError, match="quantization"):
        Manifest.model_validate(fields)


def test_task_and_decoding_must_agree():
    fields = _with_files(manifest_fields())
    fields["outputs"]["task"] = "detection"
    with pytest.raises(ValidationError, match="cannot use decoding"):
        Manifest.model_validate(fields)


versions = st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))


@given(versions, versions)
def test_semver_order_matches_numeric_order(a, b):
    assert (parse_semver("{}.{}.{}".format(*a)) < parse_semver("{}.{}.{}".format(*b))) == (a < b)


def test_prerelease_sorts_before_release():
    assert parse_semver("1.2.0-rc.1") < parse_semver("1.2.0-rc.2") < parse_semver("1.2.0")
