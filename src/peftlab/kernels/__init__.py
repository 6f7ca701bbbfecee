"""Fused kernels behind method files: same results as the readable path, less time and memory."""
