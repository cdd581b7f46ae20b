"""Inference engines behind one protocol: Triton (remote) and embedded onnxruntime."""
