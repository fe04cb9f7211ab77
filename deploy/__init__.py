"""The deployment layer: ``VMM`` discovers the hardware and deploys a model under constraints.

Floors: this package imports ``ai_vmm`` (the compiler's public API) and ``ai_vmm.runtime``;
nothing below it imports this package.
"""
