"""Backends, one module each, all with the shape of ``ai_vmm.targets.base.Target``."""
