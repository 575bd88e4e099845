"""One architecture in three frameworks: same parameters, same interface, a real training path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.config import TrainConfig
from models.contract import FRAMEWORKS, PARAMS, parse_frameworks
from models.data import scale_images
from models.training import framework_module
from tests.conftest import run_cli

DRY_RUN = TrainConfig(epochs=1, dry_run=True)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_framework_builds_the_same_parameter_count(framework):
    module = framework_module(framework)
    assert module.count_params(module.build(seed=0)) == PARAMS == 34_826


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dry_run_training_predicts_logits_of_the_contract(framework, fixture_data, tmp_path):
    module = framework_module(framework)
    model = module.train(DRY_RUN, fixture_data)
    images = scale_images(fixture_data.test_images[:7])
    logits = module.predict(model, images)
    assert logits.shape == (7, 10) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    # dropout is off in predict: the same images give the same logits
    np.testing.assert_array_equal(logits, module.predict(model, images))
    reloaded = module.load(module.save(model, tmp_path).parent)
    np.testing.assert_allclose(module.predict(reloaded, images), logits, atol=1e-6)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_same_seed_gives_same_initial_weights(framework, fixture_data):
    module = framework_module(framework)
    images = scale_images(fixture_data.test_images[:3])
    first = module.predict(module.build(seed=3), images)
    second = module.predict(module.build(seed=3), images)
    other = module.predict(module.build(seed=4), images)
    np.testing.assert_allclose(first, second, atol=1e-6)
    assert not np.allclose(first, other)


def test_frameworks_parse_all_and_lists():
    assert parse_frameworks("all") == list(FRAMEWORKS)
    assert parse_frameworks("pytorch, keras,pytorch") == ["pytorch", "keras"]
    with pytest.raises(ValueError, match="unknown framework 'jax'"):
        parse_frameworks("keras,jax")


@pytest.mark.parametrize("command", ["train", "export", "build", "compare", "serve", "loadtest"])
def test_every_command_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_unknown_framework_is_a_clear_cli_error(tmp_path):
    result = run_cli("train", "--frameworks", "jax", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "unknown framework 'jax'" in result.stderr


def test_train_writes_native_models_and_metrics(built_models):
    for framework in FRAMEWORKS:
        folder = built_models.artifacts / framework
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["framework"] == framework
        assert metrics["params"] == PARAMS
        assert metrics["train_images"] == 500 and metrics["test_images"] == 250
        assert metrics["epochs"] == 8 and metrics["seed"] == 0
        assert metrics["train_seconds"] > 0 and metrics["framework_version"]
        assert 0.7 <= metrics["test_accuracy"] <= 1.0  # learned something from 500 digits
        assert (folder / metrics["artifact"]).exists()
