"""MNIST data, the shared contract and one CNN per framework (TensorFlow, Keras, PyTorch)."""
