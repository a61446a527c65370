"""What can be set, and the tables it chooses from.

``params``: ``params.yaml`` -> validated, frozen dataclasses (the one way configuration enters).
The tables, declared once and read by everything that lists their entries:
``dataset_table`` (the datasets: classes, image size, the paper's models),
``method_table`` (the student's training methods: teachers, published settings),
``attack_table`` (the evaluation's attacks, and the 1/255 -> pixels conversion).

Plain data, no torch. Imports ``bmtard.core`` only.
"""
