"""Mixture-of-experts routing statistics and expert-placement metrics."""
