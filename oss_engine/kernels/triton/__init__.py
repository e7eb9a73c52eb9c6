"""Triton kernels, each the fast twin of a `kernels/ref` function with the same contract."""
