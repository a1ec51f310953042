"""Numerical gradients (placeholder: being written)."""
