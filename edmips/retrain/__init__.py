"""Retraining the found network with fixed bit-widths, then integer export."""
