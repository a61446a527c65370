"""B-MTARD: Balanced Multi-Teacher Adversarial Robustness Distillation, library and pipeline."""
