"""Compile time: from a registered model to an artifact directory.

- spec.py: BuildOptions and ModelSpec (the exact PyTorch model an artifact comes from);
- weights.py: seeded parity init, checkpoints; flops.py: parameters and MACs counted;
- stages/: export (PyTorch -> ONNX), simplify (onnxsim), fold_bn, compile (-> TVM library);
- build.py: the stages in order, each checked on ONNX Runtime (ort.py, numerics.py);
- artifact.py: the artifact directory, written atomically, with its manifest and hashes;
- preprocess.py: the input preprocessing an artifact records (resize, crop, mean / std).
"""
