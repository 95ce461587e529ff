"""Other formats: the official PyTorch releases' checkpoints, read and written without unpickling code, and ONNX
export (``onnx_export``, which needs the ``onnx`` extra)."""
