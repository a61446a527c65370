"""Many runs at once: grids of experiments over one params file (``grid``), the comparison
table and trade-off picture (``compare``), and published points to compare with
(``reported``).

Imports ``bmtard.config``, ``bmtard.runtime`` (the command line) and ``bmtard.core``.
"""
