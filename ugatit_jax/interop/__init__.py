"""The official PyTorch releases' checkpoint formats, read and written without unpickling code."""
