"""The pipeline stages: one small script each, run as `python -m stages.NAME` (see dvc.yaml)."""
