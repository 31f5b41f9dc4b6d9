"""Published measurements (data/, each file with its source in its header) and the report that compares our
predictions with them: `python -m clusterplan.reference`."""
