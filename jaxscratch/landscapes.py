"""2-D test functions (placeholder: being written)."""
