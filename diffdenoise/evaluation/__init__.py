"""Evaluation: score a checkpoint on held-out shards or files (SI-SDR, PESQ, STOI per SNR)
against the Wiener baseline, and compare files against a clean reference."""
