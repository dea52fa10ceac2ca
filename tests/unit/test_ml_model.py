"""The model worker's model: providers chosen, inputs checked field by field, one forward
pass per batch answering each row as a direct ONNX Runtime call does, models of other shapes
refused or read through the same code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from workers.ml_model.build import FEATURES, build
from workers.ml_model.model import (
    CPU,
    CUDA,
    BadModelInput,
    Model,
    UnsupportedModel,
    choose_providers,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Model:
    path = build(tmp_path_factory.mktemp("model") / "digits.onnx")
    return Model(path, name="digits", provider="cpu")


def test_providers() -> None:
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    assert choose_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(UnsupportedModel, match="onnxruntime-gpu"):
        choose_providers("cuda", [CPU])


def test_the_session_says_what_it_reads(digits: Model) -> None:
    assert digits.describe()["input"] == {"name": "input", "features": FEATURES}
    assert digits.outputs.names == ["label", "probabilities"]
    assert digits.provider == CPU


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([1.0], "input must be an object"),
        ({"model": "other", "features": [0.0] * FEATURES}, "input.model"),
        ({"model": "digits"}, "input.features must be a list"),
        ({"model": "digits", "features": [0.0] * 3}, "takes 64 features, got 3"),
        ({"model": "digits", "features": [0.0] * 63 + ["x"]}, r"input.features\[63\]"),
        ({"model": "digits", "features": [True] + [0.0] * 63}, r"input.features\[0\]"),
    ],
)
def test_bad_input_names_the_field(digits: Model, given: Any, message: str) -> None:
    with pytest.raises(BadModelInput, match=message):
        digits.check(given)


def test_a_batch_answers_each_row_as_direct_inference_does(digits: Model) -> None:
    rows = np.random.default_rng(3).uniform(0, 16, (12, FEATURES)).astype(np.float32)
    checked = [digits.check({"model": "digits", "features": row.tolist()}) for row in rows]
    results = digits.predict(checked)
    direct = onnxruntime.InferenceSession(str(digits.path), providers=[CPU])
    for row, result in zip(rows, results, strict=True):
        label, probabilities = direct.run(None, {"input": row.reshape(1, -1)})
        assert result["label"] == int(label[0])
        # A batched pass may sum in another order than a pass over one row.
        assert result["probabilities"] == pytest.approx(probabilities[0].tolist(), abs=1e-5)
        assert result["model"] == "digits"


def _scores_only_model(path: Path) -> Path:
    """x [N, 3] -> scores = x @ W, no label output."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1.0, 0.0, 0.0, 1.0, 1.0, -1.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"])],
        "scores_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_model_without_a_label_answers_scores_and_their_argmax(tmp_path: Path) -> None:
    model = Model(_scores_only_model(tmp_path / "s.onnx"), name="s", provider="cpu")
    assert model.features == 3
    [result] = model.predict([[0.0, 2.0, 0.0]])
    assert result == {"label": 1, "scores": [0.0, 2.0], "model": "s"}
    [other] = model.predict([[3.0, 0.0, 0.0]])
    assert other == {"label": 0, "scores": [3.0, 0.0], "model": "s"}


def test_a_model_with_two_inputs_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(UnsupportedModel, match="one float"):
        Model(tmp_path / "two.onnx", name="two", provider="cpu")
