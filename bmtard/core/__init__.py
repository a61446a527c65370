"""The machinery under everything, with no knowledge of images, models or parameters: one-line
errors (``errors``), atomic writes and digests (``io``), free space and last good outputs
(``outputs``), the code that made a result (``provenance``), stop signals (``stop``), kill points
for the crash tests (``faults``), one engine per folder (``project_lock``), GPUs of a job's own
(``gpu_slots``), and several processes per stage (``launch``, ``distributed``).

Imports nothing else of bmtard: every other folder stands on this one.
"""
