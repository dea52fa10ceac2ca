"""The model worker: serves `model.predict@1` from an ONNX model with dynamic batching."""
