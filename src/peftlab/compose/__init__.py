"""Arithmetic on adapters: merging rules on tensors (merging.py), on LoRA factors (low_rank.py), and the
model-level driver behind `AdaptedModel.add_weighted_adapter` (weighted_adapter.py)."""
