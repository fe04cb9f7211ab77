"""Serving: protocols (KServe v2, OpenAI), tenants and QoS, batching, device scheduling, metrics.

Floors: this package sits on ``ai_vmm.deploy``; nothing below it imports this package.
"""
