"""Images in and out: the download stage's readers (CIFAR batches with a restricted unpickler,
Tiny-ImageNet JPEGs), balanced subsets and the manifest (``datasets``), the split files every
later stage reads (``splits``, ``stage_data``) and batches on the training device (``loader``).

Imports ``bmtard.core`` and ``bmtard.config``.
"""
