"""Serving many adapters on one base model: the adapter pool (load on demand, evict the least recently used) and
mixed batches (each request with its own adapter, core/routing.py)."""

from peftlab.serve.pool import AdapterPool, PoolStats

__all__ = ["AdapterPool", "PoolStats"]
