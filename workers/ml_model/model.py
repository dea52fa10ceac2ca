"""An ONNX model behind an ONNX Runtime session, and the check of one task's features.

Supported models: one input, a float tensor [N, F] (F fixed, or left open and then not
checked); outputs that are tensors with the batch as their first dimension. Of those, the
first integer (or string) one is the label and the first float one with a second dimension
is the probabilities (when the model also has a label) or the scores (when it has not: the
label is then their argmax). scikit-learn classifiers converted with skl2onnx and
`zipmap=False` have exactly this shape; a ZipMap output (a sequence of maps) is refused at
load, with the reason.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime

logger = logging.getLogger("workers.ml_model")

Provider = Literal["auto", "cpu", "cuda"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_FLOAT_INPUTS = {"tensor(float)": np.float32, "tensor(double)": np.float64}
_LABEL_TYPES = ("tensor(int64)", "tensor(int32)", "tensor(string)")
_SCORE_TYPES = ("tensor(float)", "tensor(double)")


class BadModelInput(ValueError):
    """A task's input this model cannot take; fails that task only."""


class UnsupportedModel(ValueError):
    """A model file whose inputs or outputs are not of the supported shape."""


def choose_providers(wanted: Provider, available: list[str]) -> list[str]:
    """The session's providers: CUDA first when wanted (or when `auto` finds it), CPU last
    as ONNX Runtime's fallback for operators CUDA lacks."""
    if wanted == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if wanted == "cuda":
        raise UnsupportedModel(
            f"--provider cuda: this onnxruntime offers only {', '.join(available)}"
            " (install onnxruntime-gpu on a machine with CUDA)"
        )
    return [CPU]


@dataclass(frozen=True)
class Outputs:
    """Which session outputs a prediction reads."""

    label: str | None
    scores: str | None

    @property
    def names(self) -> list[str]:
        return [name for name in (self.label, self.scores) if name is not None]


def _outputs(session: onnxruntime.InferenceSession) -> Outputs:
    label = scores = None
    for output in session.get_outputs():
        if not output.type.startswith("tensor("):
            raise UnsupportedModel(
                f"output {output.name!r} is a {output.type}, not a tensor (a scikit-learn"
                " classifier needs skl2onnx's option zipmap=False)"
            )
        if label is None and output.type in _LABEL_TYPES:
            label = output.name
        elif scores is None and output.type in _SCORE_TYPES and len(output.shape) == 2:
            scores = output.name
    if label is None and scores is None:
        raise UnsupportedModel("the model has neither a label output nor a [N, K] float output")
    return Outputs(label, scores)


class Model:
    """One loaded model. `predict` is thread-safe (ONNX Runtime sessions are) and is called
    off the event loop."""

    def __init__(self, path: Path, *, name: str, provider: Provider = "auto") -> None:
        self.path = path
        self.name = name
        providers = choose_providers(provider, onnxruntime.get_available_providers())
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.provider = self.session.get_providers()[0]
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type not in _FLOAT_INPUTS or len(inputs[0].shape) != 2:
            shown = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise UnsupportedModel(f"the model needs one float [N, F] input, it has: {shown}")
        self.input_name = inputs[0].name
        self.dtype = _FLOAT_INPUTS[inputs[0].type]
        width = inputs[0].shape[1]
        self.features: int | None = width if isinstance(width, int) else None
        self.outputs = _outputs(self.session)
        # The probabilities' name when there is a label to go with them; "scores" otherwise.
        self.scores_key = "probabilities" if self.outputs.label is not None else "scores"

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "path": str(self.path),
            "provider": self.provider,
            "providers": self.session.get_providers(),
            "input": {"name": self.input_name, "features": self.features},
            "outputs": {"label": self.outputs.label, self.scores_key: self.outputs.scores},
        }

    def check(self, block_input: Any) -> list[float]:
        """The features of one task's input; raises BadModelInput with the offending field."""
        if not isinstance(block_input, dict):
            raise BadModelInput(f"input must be an object, got {type(block_input).__name__}")
        if block_input.get("model") != self.name:
            raise BadModelInput(
                f"input.model: this worker serves {self.name!r}, not {block_input.get('model')!r}"
            )
        features = block_input.get("features")
        if not isinstance(features, list):
            raise BadModelInput("input.features must be a list of numbers")
        if self.features is not None and len(features) != self.features:
            raise BadModelInput(
                f"input.features: {self.name} takes {self.features} features, got {len(features)}"
            )
        for index, feature in enumerate(features):
            # bool is an int to Python, not a number to a model.
            if isinstance(feature, bool) or not isinstance(feature, int | float):
                raise BadModelInput(f"input.features[{index}] is not a number")
            if not math.isfinite(feature):
                raise BadModelInput(f"input.features[{index}] is not finite")
        return [float(f) for f in features]

    def predict(self, rows: list[list[float]]) -> list[dict[str, Any]]:
        """One forward pass over `rows` (each already checked); one result per row, in order."""
        batch: npt.NDArray[Any] = np.asarray(rows, dtype=self.dtype)
        found = self.session.run(self.outputs.names, {self.input_name: batch})
        by_name = dict(zip(self.outputs.names, found, strict=True))
        scores = by_name.get(self.outputs.scores) if self.outputs.scores else None
        if self.outputs.label is not None:
            labels = by_name[self.outputs.label].reshape(len(rows), -1)[:, 0].tolist()
        else:
            assert scores is not None
            labels = np.argmax(scores, axis=1).tolist()
        results: list[dict[str, Any]] = []
        for row, label in enumerate(labels):
            result: dict[str, Any] = {"label": label, "model": self.name}
            if scores is not None:
                result[self.scores_key] = [float(s) for s in scores[row]]
            results.append(result)
        return results
