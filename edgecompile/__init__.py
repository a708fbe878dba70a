"""edgecompile: lightweight CNNs from PyTorch to compiled, measured TVM artifacts for edge devices."""

__version__ = "0.1.0"
