"""Frontends: each turns one source format into an onnx_ir model. They never import each other."""
