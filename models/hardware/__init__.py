"""Hardware as the cost models see it: clusters, achievable rates, calibration, collectives, topology."""
