"""Sweep definitions for ablate.py (python ablate.py --sweep=configs/ablations/<name>.py)."""
