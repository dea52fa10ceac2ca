"""Build the default model: a logistic-regression digit classifier as ONNX.

    python -m workers.ml_model.build --out .tideflow/models/digits.onnx

The data is scikit-learn's `load_digits` (shipped with scikit-learn, 1,797 8x8 images, 64
features of 0..16 each, 10 classes), so no download is needed. Training is deterministic
(lbfgs, no shuffling), and takes about a second. The ONNX graph has one input `input`
(float [N, 64]) and two outputs: `label` (int64 [N]) and `probabilities` (float [N, 10]);
ZipMap is left out so that the probabilities stay a tensor.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

FEATURES = 64
"""Features per digit image: 8x8 pixels."""


def train() -> LogisticRegression:
    digits = load_digits()
    classifier = LogisticRegression(max_iter=2000)
    classifier.fit(digits.data.astype(np.float32), digits.target)
    return classifier


def build(out: Path) -> Path:
    """Train and write the model to `out` (atomically: a concurrent reader never sees half a
    file); returns `out`."""
    classifier = train()
    onnx_model = to_onnx(
        classifier,
        np.zeros((1, FEATURES), dtype=np.float32),
        options={id(classifier): {"zipmap": False}},
        target_opset=17,
    )
    # Stable names, whatever skl2onnx calls them (the worker reads them from the session).
    renames = {"output_label": "label", "output_probability": "probabilities", "X": "input"}
    for node in onnx_model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (*onnx_model.graph.input, *onnx_model.graph.output):
        value.name = renames.get(value.name, value.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=out.parent, suffix=".onnx.tmp")
    with os.fdopen(fd, "wb") as file:
        file.write(onnx_model.SerializeToString())
    os.replace(temporary, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.ml_model.build", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where the .onnx file goes")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
