"""The parts of ``bench/gpu_acceptance.py``: running a command under a time limit (``proc``), the
checks (``parts``), the tiny pipeline by hand (``pipeline``) and the report (``report``)."""
