"""How a stage process starts and computes: arguments, one-line errors and the project lock
(``cli``), device, seeds and threads (``device``), precision, memory layout and compilation of
the training stages (``execution``).

Imports ``bmtard.core`` and ``bmtard.config``.
"""
