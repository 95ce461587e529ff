"""Evaluation: paired and distribution metrics, the Inception network for KID/FID, sample strips."""
