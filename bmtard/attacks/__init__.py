"""White-box L-inf attacks. One contract for all: ``model`` maps images in [0, 1], shape
(N, C, H, W), to logits (N, K); an attack returns adversarial images of the same shape, inside the
eps-ball around ``x`` and inside [0, 1]. Sizes (eps, step_size) are in pixel units here (8/255, not
8); the parameter files state them in 1/255 and convert at the boundary.

Attacks never change the model's train/eval mode (callers choose it) and never accumulate gradients
in the model's parameters.

Import each attack from its own module (``bmtard.attacks.pgd``, ...): a stage then depends only on
the attacks it runs.
"""
