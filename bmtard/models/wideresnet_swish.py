"""Wide ResNet with Swish and input normalization inside, as DeepMind's ``adversarial_robustness``
PyTorch models (Gowal et al. 2020), whose CIFAR-100 WRN-70-16 is the robust teacher on CIFAR-100
(spec section 1.3; RSLAD and MTARD use it).

State_dict keys match that model (and ``mtard/cifar100_models/wideresnet.py`` of MTARD's ECCV code),
so its published weights load: ``init_conv``, ``layer.<g>.block.<i>`` (``batchnorm_0``, ``conv_0``,
``batchnorm_1``, ``conv_1``, and ``shortcut`` where the channel count changes), ``batchnorm``,
``logits``. The normalization constants are not in that state_dict (non-persistent buffers here).

Normalization: the mean and std of the data the published weights were trained on (``mean``,
``std``; ``wrn70_16`` takes CIFAR-100's, which the published CIFAR-100 weights were trained with).
MTARD's ECCV file defaults to CIFAR-10's for every model (spec quirk 10); its CIFAR-100 script
cannot run as published (it calls an undefined ``wideresnet()``), so there is no faithful call
to reproduce, and the published weights expect CIFAR-100's. RobustBench's ``DMWideResNet``
(``robustbench/model_zoo/architectures/dm_wide_resnet.py``) is the same network and keys; the
models of Wang2023Better, Cui2023Decoupled and Gowal2020/2021 are it at depth 28 or 70 and width
10 or 16, with CIFAR-10's or CIFAR-100's constants (``dm_wrn*`` in ``bmtard.models``). Its
``Swish`` and ``nn.SiLU`` are the same function; ``F.silu`` computes it here.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bmtard.models._pooling import global_avg_pool
from bmtard.models._width import wide_layout

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class SwishBlock(nn.Module):
    """Pre-activation wide block with Swish: (N, c_in, H, W) -> (N, c_out, H/s, W/s).

    The first convolution pads as TensorFlow's "SAME" (1 on every side for stride 1; right and
    bottom only for stride 2), as the DeepMind model. Where the channel count changes, the 1x1
    ``shortcut`` is applied to the activated input; otherwise the raw input is added."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride = {stride}: must be 1 or 2")
        self.batchnorm_0 = nn.BatchNorm2d(c_in)
        self.conv_0 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(c_out)
        self.conv_1 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.silu(self.batchnorm_0(x))
        out = self.conv_0(F.pad(act, self.pad))
        out = self.conv_1(F.silu(self.batchnorm_1(out)))
        out += x if self.shortcut is None else self.shortcut(act)  # = skip + out, bitwise
        return out


class BlockGroup(nn.Module):
    """``n`` SwishBlocks in ``self.block``; only the first changes channels and stride."""

    def __init__(self, n: int, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *(
                SwishBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                for i in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WideResNetSwish(nn.Module):
    """WRN-``depth``-``widen_factor`` with Swish: input (N, 3, H, W) in [0, 1], normalized inside
    with ``mean`` and ``std`` (per channel) -> logits (N, num_classes). ``width`` scales every
    channel count (1.0 = the reference)."""

    def __init__(
        self,
        depth: int = 70,
        num_classes: int = 100,
        widen_factor: int = 16,
        width: float = 1.0,
        mean: tuple[float, float, float] = CIFAR100_MEAN,
        std: tuple[float, float, float] = CIFAR100_STD,
    ) -> None:
        super().__init__()
        n, (c0, c1, c2, c3) = wide_layout(depth, widen_factor, width)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), False)
        self.init_conv = nn.Conv2d(3, c0, 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            BlockGroup(n, c0, c1, 1), BlockGroup(n, c1, c2, 2), BlockGroup(n, c2, c3, 2)
        )
        self.batchnorm = nn.BatchNorm2d(c3)
        self.logits = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.init_conv((x - self.mean) / self.std)
        out = F.silu(self.batchnorm(self.layer(out)))
        out = global_avg_pool(out)  # avg_pool2d(8) at 32 x 32, as the reference
        return self.logits(out)
