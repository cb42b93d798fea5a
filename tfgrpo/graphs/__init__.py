"""Graphs: ``step`` (one Training-Free GRPO step) and ``learn`` (epochs x batches around it)."""
