"""clusterplan: plan, check and calibrate large-model training and serving layouts on GPU clusters.

The import package maps onto the repository root (see pyproject.toml); its parts are
`hardware_db` (data with sources), `models` (specs and analytical cost models), `solver`
(searches over the models), `profiler` (calibration), `validate` (runs plans) and `cli`.
"""

__version__ = "0.1.0"
