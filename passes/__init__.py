"""Target-neutral IR -> IR passes (onnx_ir / onnxscript only: never a target, never a vendor SDK)."""
