"""Preference data for DPO: sampled candidates, judged pairs, precomputed reference log-probs."""
