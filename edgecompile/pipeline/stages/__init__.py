"""Pipeline stages, each a function from one artifact to the next:

    nn.Module --export--> ONNX --simplify--> ONNX --fold_bn--> ONNX --compile--> library
"""
