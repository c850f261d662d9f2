"""Data pipelines and training scripts for the two-stage webly supervised method.

Run the scripts as modules from the repository root (``python -m training.<name>``).
"""
