"""Wide ResNet (WRN-depth-k) for CIFAR with the TRADES key names.

State_dict keys match ``yaodongyu/TRADES`` ``models/wideresnet.py`` (the same file is
``zhaoshiji123/MTARD-extension`` ``cifar10_models/wideresnet.py``), so TRADES' published
``model_cifar_wrn.pt`` loads: ``conv1``, ``block1``/``sub_block1``/``block2``/``block3`` each with
``layer.<i>`` blocks (``bn1``, ``conv1``, ``bn2``, ``conv2``, and ``convShortcut`` where the channel
count changes), ``bn1``, ``fc``. ``sub_block1`` is built (its weights are in the checkpoint) but,
as in the reference, never used in ``forward``. RobustBench's ``WideResNet`` is the same class
with ``sub_block1`` optional (``sub_block1=False``: the LTD teachers on CIFAR-10); here
``sub_block1=False`` gives exactly its keys (``wrn34_10_nosub``, ``wrn34_20_nosub``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from bmtard.models._pooling import global_avg_pool
from bmtard.models._width import wide_layout


class BasicBlock(nn.Module):
    """Pre-activation wide block: (N, in_planes, H, W) -> (N, out_planes, H/s, W/s). When the
    channel count changes, the 1x1 ``convShortcut`` is applied to the activated input."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x), inplace=True)
        out = F.relu(self.bn2(self.conv1(act)), inplace=True)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        out += x if self.convShortcut is None else self.convShortcut(act)  # = skip + out, bitwise
        return out


class NetworkBlock(nn.Module):
    """``num_layers`` BasicBlocks in ``self.layer``; only the first changes channels/stride."""

    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(num_layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: input (N, 3, 32, 32) in [0, 1] (no normalization inside)
    -> logits (N, num_classes). ``width`` scales every channel count (1.0 = the reference);
    ``sub_block1``: build TRADES' unused copy of ``block1`` (its weights are in the file)."""

    def __init__(
        self,
        depth: int = 34,
        num_classes: int = 10,
        widen_factor: int = 10,
        drop_rate: float = 0.0,
        width: float = 1.0,
        sub_block1: bool = True,
    ) -> None:
        super().__init__()
        n, (c0, c1, c2, c3) = wide_layout(depth, widen_factor, width)
        self.conv1 = nn.Conv2d(3, c0, 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, c0, c1, 1, drop_rate)
        if sub_block1:  # unused in forward; its weights are in TRADES' checkpoint
            self.sub_block1 = NetworkBlock(n, c0, c1, 1, drop_rate)
        self.block2 = NetworkBlock(n, c1, c2, 2, drop_rate)
        self.block3 = NetworkBlock(n, c2, c3, 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3, num_classes)
        for m in self.modules():  # the reference initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out), inplace=True)
        out = global_avg_pool(out)  # avg_pool2d(8) at 32 x 32, as the reference
        return self.fc(out)
