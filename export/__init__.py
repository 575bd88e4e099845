"""Framework models to the one ONNX contract, with a parity check, registered in the BentoML store."""
