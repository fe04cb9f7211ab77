"""Target-neutral IR -> IR passes.

They import onnx_ir / onnxscript / numpy only: never a target, never a vendor SDK.
"""
