"""The models' in-place ReLUs and residual sums change no bit: every model's forward, its input
gradient (eval mode, as PGD takes it) and its weight gradients and BatchNorm statistics (train
mode) equal those of the same model run with the out-of-place forwards it had before, which this
file keeps as the reference. In-place ops only spare an allocation per activation (the official
networks' ``nn.ReLU(inplace=True)``); ``a + b`` and ``b + a`` are the same IEEE sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bmtard.models import (
    ARCHS,
    build_model,
    mobilenet_v2,
    preact_resnet,
    resnet,
    resnet_cifar,
    wideresnet,
    wideresnet_swish,
)
from bmtard.models._pooling import global_avg_pool
from bmtard.models.wideresnet import WideResNet


def resnet_block(m, x):
    out = F.relu(m.bn1(m.conv1(x)))
    out = m.bn2(m.conv2(out))
    return F.relu(out + m.shortcut(x))


def resnet_net(m, x):
    out = F.relu(m.bn1(m.conv1(x)))
    out = m.layer4(m.layer3(m.layer2(m.layer1(out))))
    return m.linear(global_avg_pool(out))


def cifar_block(m, x):
    out = F.relu(m.bn1(m.conv1(x)))
    out = m.bn2(m.conv2(out))
    identity = x if m.downsample is None else m.downsample(x)
    return F.relu(out + identity)


def cifar_net(m, x):
    out = F.relu(m.bn1(m.conv1(x)))
    out = m.layer3(m.layer2(m.layer1(out)))
    return m.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def preact_block(m, x):
    out = F.relu(m.bn1(x))
    skip = x if m.shortcut is None else m.shortcut(out)
    out = m.conv2(F.relu(m.bn2(m.conv1(out))))
    return out + skip


def mobile_block(m, x):
    out = F.relu(m.bn1(m.conv1(x)))
    out = F.relu(m.bn2(m.conv2(out)))
    out = m.bn3(m.conv3(out))
    return out + m.shortcut(x) if m.stride == 1 else out


def mobile_net(m, x):
    out = F.relu(m.bn1(m.conv1(x)))
    out = F.relu(m.bn2(m.conv2(m.layers(out))))
    return m.linear(global_avg_pool(out))


def wide_block(m, x):
    act = F.relu(m.bn1(x))
    out = F.relu(m.bn2(m.conv1(act)))
    if m.drop_rate > 0:
        out = F.dropout(out, p=m.drop_rate, training=m.training)
    out = m.conv2(out)
    return (x if m.convShortcut is None else m.convShortcut(act)) + out


def wide_net(m, x):
    out = m.block3(m.block2(m.block1(m.conv1(x))))
    return m.fc(global_avg_pool(F.relu(m.bn1(out))))


def swish_block(m, x):
    act = F.silu(m.batchnorm_0(x))
    out = m.conv_1(F.silu(m.batchnorm_1(m.conv_0(F.pad(act, m.pad)))))
    return (x if m.shortcut is None else m.shortcut(act)) + out


#: (class, the out-of-place forward it had before the in-place one)
OUT_OF_PLACE = [
    (resnet.BasicBlock, resnet_block),
    (resnet.ResNet18, resnet_net),
    (resnet_cifar.BasicBlock, cifar_block),
    (resnet_cifar.CifarResNet, cifar_net),
    (preact_resnet.PreActBlock, preact_block),
    (mobilenet_v2.Block, mobile_block),
    (mobilenet_v2.MobileNetV2, mobile_net),
    (wideresnet.BasicBlock, wide_block),
    (wideresnet.WideResNet, wide_net),
    (wideresnet_swish.SwishBlock, swish_block),
]


def run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a training step reads from a model: the eval-mode logits and input gradient (the
    attack), then the train-mode logits, weight gradients and BatchNorm statistics."""
    got = {}
    model.eval()
    x_adv = x.clone().requires_grad_(True)
    z = model(x_adv)
    got["eval_logits"] = z.detach()
    got["input_grad"] = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), x_adv)[0]
    model.train()
    torch.manual_seed(3)  # dropout's mask, where there is dropout
    z = model(x)
    F.cross_entropy(z, y).backward()
    got["train_logits"] = z.detach()
    got |= {f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    got |= {f"buffer {n}": b for n, b in model.named_buffers()}
    with torch.inference_mode():  # a frozen teacher's forward
        got["inference_logits"] = model.eval()(x)
    return got


def models() -> list[tuple[str, torch.nn.Module]]:
    built = [(arch, build_model(arch, 10, 0.125)) for arch in ARCHS]
    return built + [("wrn16_4 with dropout", WideResNet(16, 10, 4, drop_rate=0.3, width=0.25))]


@pytest.mark.parametrize("index", range(len(ARCHS) + 1))
def test_in_place_forward_and_backward_are_bit_identical(index, monkeypatch):
    torch.manual_seed(index)
    name, model = models()[index]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    fast = run(model, x, y)
    for cls, forward in OUT_OF_PLACE:
        monkeypatch.setattr(cls, "forward", forward)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    slow = run(model, x, y)
    assert fast.keys() == slow.keys()
    for key, value in slow.items():
        assert torch.equal(fast[key], value), f"{name}: {key}"
    assert any(k.startswith("grad ") for k in slow) and slow["input_grad"].abs().sum() > 0


def test_wrn_sub_block1_stays_in_the_state_dict_and_out_of_the_forward():
    """The in-place forward still leaves TRADES' unused ``sub_block1`` alone: its weights are in
    the state_dict and get no gradient."""
    model = build_model("wrn34_10", 10, 0.0625)
    assert any(k.startswith("sub_block1.") for k in model.state_dict())
    F.cross_entropy(model(torch.rand(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert all(p.grad is None for p in model.sub_block1.parameters())
    assert all(p.grad is not None for p in model.block1.parameters())
