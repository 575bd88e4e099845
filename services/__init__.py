"""The BentoML service set that serves the three ONNX models (ONNX Runtime and numpy only)."""
