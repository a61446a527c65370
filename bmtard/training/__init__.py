"""Training a model: the loop shared by every method (``loop``), its schedule (``schedule``),
checkpoint selection (``selection``), the saved state a killed run resumes from (``state``),
curves (``tracking``), what every training stage does around the loop (``stage``), and the two
kinds of stage: the teachers (``teachers``) and the student (``distill``).

Imports ``bmtard.methods``, ``bmtard.evaluation`` (the monitor) and below.
"""
