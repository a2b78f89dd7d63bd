"""Triton kernels with plain-torch references and a dispatcher (imported as clara.kernels)."""
