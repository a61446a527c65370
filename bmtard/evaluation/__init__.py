"""Measuring a model: clean accuracy and the training monitor (``accuracy``), the attacks run
batch by batch with resumable results (``runner``), the protocol of the paper's table
(``protocol``; its attacks are declared in ``bmtard.config.attack_table``), the gradient-masking
checks (``sanity``), and the evaluate stage with its model card (``evaluate``).

Imports ``bmtard.attacks``, ``bmtard.models``, ``bmtard.data``, ``bmtard.runtime`` and below.
"""
