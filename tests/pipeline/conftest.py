"""Real packages (built once per session) for pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import model_factory


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline-packages")
    return {
        "classifier": model_factory.classifier_package(root / "classifier", golden=False).root,
        "classifier2": model_factory.classifier_package(
            root / "classifier2", version="2.0.0", seed=3, golden=False
        ).root,
        "sensor": model_factory.tensor_package(root / "sensor", window=8, channels=3).root,
        "stateful": model_factory.stateful_package(root / "stateful", channels=2).root,
    }


@pytest.fixture(scope="session")
def blazeface_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_factory.blazeface_package(tmp_path_factory.mktemp("bf") / "blazeface").root
