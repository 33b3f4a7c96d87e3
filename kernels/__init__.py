"""Triton kernels of omnifast, installed as ``omnifast.kernels`` (never as a top-level package).

Importing this package does not import triton; each op's module does, when a Triton backend
is actually used.
"""
