"""Retraining with fixed bit-widths: the RetrainModule."""
