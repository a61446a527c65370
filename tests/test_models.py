"""bmtard.models: shapes, reference parameter counts and key names, argument checks, gradients."""

import math

import pytest
import torch

from bmtard.config import schema as config
from bmtard.models import ARCHS, build_model
from bmtard.models.wideresnet import WideResNet

SMALL = 0.125  # width for the fast forward/backward tests

# Parameter counts at width 1.0 with 10 classes, each derived by hand from the reference
# definition (conv k*k*in*out, no bias; BN 2*c; linear in*out + out), and checked against the
# published figure where one exists.
REFERENCE_PARAMS = {
    # kuangliu/pytorch-cifar models/resnet.py ResNet18 (BasicBlock [2, 2, 2, 2]):
    # the widely quoted 11,173,962 (11.17M) for CIFAR-10.
    "resnet18": 11_173_962,
    # kuangliu/pytorch-cifar models/preact_resnet.py PreActResNet18: stem 1,728; layer1 147,968;
    # layer2 525,184; layer3 2,098,944; layer4 8,392,192; linear 5,130 -> 11,171,146 (11.17M,
    # the figure quoted for PreActResNet-18 in adversarial-training papers).
    "preact_resnet18": 11_171_146,
    # kuangliu/pytorch-cifar models/mobilenetv2.py: sum over the cfg of the expand, depthwise,
    # project (+ projection shortcut) layers, stem 928, head conv 409,600 + BN 2,560, linear 12,810
    # -> 2,296,922 (the 2.30M quoted for this CIFAR MobileNetV2).
    "mobilenet_v2": 2_296_922,
    # zhaoshiji123/MTARD cifar10_nat_teacher_models/resnet.py, ResNet-56 with 1x1-conv+BN
    # downsample: stem 464; stage1 9 * 4,672 = 42,048; stage2 14,528 + 8 * 18,560 = 163,008;
    # stage3 57,728 + 8 * 73,984 = 649,600; fc 650 -> 855,770 (0.86M in chenyaofo's
    # pytorch-cifar-models table; 0.85M in He et al. 2016 with the parameter-free shortcut).
    "resnet56": 855_770,
    # yaodongyu/TRADES models/wideresnet.py WRN-34-10: conv1 432; block1 2,102,112;
    # block2 8,812,480; block3 35,237,760; bn 1,280; fc 6,410 -> 46,160,474 (the published
    # 46.16M for WRN-34-10), plus the unused sub_block1 (another 2,102,112) in TRADES' class.
    "wrn34_10": 46_160_474 + 2_102_112,
    # DeepMind adversarial_robustness WRN-70-16 (Swish), 11 blocks per group at 256/512/1024:
    # init_conv 432; group1 631,328 + 10 * 1,180,672; group2 3,671,552 + 10 * 4,720,640;
    # group3 14,683,136 + 10 * 18,878,464; batchnorm 2,048; logits 10,250 -> 266,796,506
    # (the 266.8M quoted by Gowal et al. 2020).
    "wrn70_16": 266_796_506,
    # RobustBench's WideResNet(34, 10, sub_block1=False) (the LTD CIFAR-10 teacher): TRADES'
    # count without the unused sub_block1, the published 46.16M
    "wrn34_10_nosub": 46_160_474,
    # WideResNet(34, 20, sub_block1=False), 5 blocks per group at 320/640/1280: conv1 432;
    # block1 973,472 + 4 * 1,844,480; block2 5,736,320 + 4 * 7,375,360; block3 22,941,440 +
    # 4 * 29,496,320; bn 2,560; fc 12,810 -> 184,531,674 (LTD's 184.5M)
    "wrn34_20_nosub": 184_531_674,
    # DeepMind's WRN-28-10 (RobustBench's DMWideResNet(depth=28, width=10)), 4 blocks per group
    # at 160/320/640: init_conv 432; group1 256,352 + 3 * 461,440; group2 1,434,560 +
    # 3 * 1,844,480; group3 5,736,320 + 3 * 7,375,360; batchnorm 1,280; logits 6,410 ->
    # 36,479,194 (the 36.5M of WRN-28-10)
    "dm_wrn28_10_cifar10": 36_479_194,
    "dm_wrn28_10_cifar100": 36_479_194,
    "dm_wrn70_16_cifar10": 266_796_506,  # wrn70_16 with CIFAR-10's normalization constants
}

# Features entering the classifier, for the count with 100 classes.
FEATURES = {
    "resnet18": 512,
    "preact_resnet18": 512,
    "mobilenet_v2": 1280,
    "resnet56": 64,
    "wrn34_10": 640,
    "wrn70_16": 1024,
    "wrn34_10_nosub": 640,
    "wrn34_20_nosub": 1280,
    "dm_wrn28_10_cifar10": 640,
    "dm_wrn28_10_cifar100": 640,
    "dm_wrn70_16_cifar10": 1024,
}

# Names (and shapes) from the reference files' state_dicts that published checkpoints carry.
REFERENCE_KEYS = {
    "resnet18": {
        "conv1.weight": (64, 3, 3, 3),
        "bn1.running_var": (64,),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer2.0.shortcut.0.weight": (128, 64, 1, 1),
        "layer2.0.shortcut.1.running_mean": (128,),
        "layer4.1.bn2.weight": (512,),
        "linear.weight": (10, 512),
        "linear.bias": (10,),
    },
    "preact_resnet18": {
        "conv1.weight": (64, 3, 3, 3),
        "layer1.0.bn1.weight": (64,),
        "layer3.0.shortcut.0.weight": (256, 128, 1, 1),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "linear.weight": (10, 512),
    },
    "mobilenet_v2": {
        "conv1.weight": (32, 3, 3, 3),
        "bn1.weight": (32,),
        "layers.0.conv1.weight": (32, 32, 1, 1),
        "layers.0.conv2.weight": (32, 1, 3, 3),
        "layers.0.shortcut.0.weight": (16, 32, 1, 1),
        "layers.16.conv3.weight": (320, 960, 1, 1),
        "conv2.weight": (1280, 320, 1, 1),
        "bn2.running_mean": (1280,),
        "linear.weight": (10, 1280),
    },
    "resnet56": {
        "conv1.weight": (16, 3, 3, 3),
        "bn1.weight": (16,),
        "layer1.8.conv2.weight": (16, 16, 3, 3),
        "layer2.0.downsample.0.weight": (32, 16, 1, 1),
        "layer2.0.downsample.1.running_var": (32,),
        "layer3.0.downsample.0.weight": (64, 32, 1, 1),
        "layer3.8.bn2.weight": (64,),
        "fc.weight": (10, 64),
        "fc.bias": (10,),
    },
    "wrn34_10": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.bn1.weight": (16,),
        "block1.layer.0.convShortcut.weight": (160, 16, 1, 1),
        "sub_block1.layer.0.conv1.weight": (160, 16, 3, 3),
        "sub_block1.layer.4.conv2.weight": (160, 160, 3, 3),
        "block2.layer.0.convShortcut.weight": (320, 160, 1, 1),
        "block3.layer.4.conv2.weight": (640, 640, 3, 3),
        "bn1.running_mean": (640,),
        "fc.weight": (10, 640),
        "fc.bias": (10,),
    },
    "wrn70_16": {
        "init_conv.weight": (16, 3, 3, 3),
        "layer.0.block.0.batchnorm_0.weight": (16,),
        "layer.0.block.0.conv_0.weight": (256, 16, 3, 3),
        "layer.0.block.0.shortcut.weight": (256, 16, 1, 1),
        "layer.0.block.10.conv_1.weight": (256, 256, 3, 3),
        "layer.1.block.0.shortcut.weight": (512, 256, 1, 1),
        "layer.2.block.10.batchnorm_1.running_var": (1024,),
        "batchnorm.running_mean": (1024,),
        "logits.weight": (10, 1024),
        "logits.bias": (10,),
    },
    "wrn34_10_nosub": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.convShortcut.weight": (160, 16, 1, 1),
        "block3.layer.4.conv2.weight": (640, 640, 3, 3),
        "fc.weight": (10, 640),
    },
    "wrn34_20_nosub": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.convShortcut.weight": (320, 16, 1, 1),
        "block2.layer.0.convShortcut.weight": (640, 320, 1, 1),
        "block3.layer.4.conv2.weight": (1280, 1280, 3, 3),
        "bn1.running_mean": (1280,),
        "fc.weight": (10, 1280),
    },
    "dm_wrn28_10_cifar10": {
        "init_conv.weight": (16, 3, 3, 3),
        "layer.0.block.0.shortcut.weight": (160, 16, 1, 1),
        "layer.0.block.3.conv_1.weight": (160, 160, 3, 3),
        "layer.2.block.3.batchnorm_1.running_var": (640,),
        "logits.weight": (10, 640),
    },
    "dm_wrn28_10_cifar100": {
        "init_conv.weight": (16, 3, 3, 3),
        "layer.1.block.0.shortcut.weight": (320, 160, 1, 1),
        "batchnorm.running_mean": (640,),
        "logits.weight": (10, 640),
    },
    "dm_wrn70_16_cifar10": {
        "init_conv.weight": (16, 3, 3, 3),
        "layer.0.block.10.conv_1.weight": (256, 256, 3, 3),
        "logits.weight": (10, 1024),
    },
}

# Keys that must NOT exist: identity shortcuts carry no weights in the references.
ABSENT_KEYS = {
    "resnet18": ["layer1.0.shortcut.0.weight", "layer2.1.shortcut.0.weight"],
    "preact_resnet18": ["layer1.0.shortcut.0.weight", "layer2.0.shortcut.1.weight"],
    "mobilenet_v2": ["layers.2.shortcut.0.weight", "layers.3.shortcut.0.weight"],
    "resnet56": ["layer1.0.downsample.0.weight", "layer2.1.downsample.0.weight"],
    "wrn34_10": ["block1.layer.1.convShortcut.weight", "block2.layer.1.convShortcut.weight"],
    "wrn70_16": ["layer.0.block.1.shortcut.weight", "layer.0.block.11.conv_0.weight"],
    # no sub_block1 (RobustBench's sub_block1=False)
    "wrn34_10_nosub": ["sub_block1.layer.0.conv1.weight", "block1.layer.1.convShortcut.weight"],
    "wrn34_20_nosub": ["sub_block1.layer.0.conv1.weight", "block1.layer.5.conv1.weight"],
    "dm_wrn28_10_cifar10": ["layer.0.block.1.shortcut.weight", "layer.0.block.4.conv_0.weight"],
    "dm_wrn28_10_cifar100": ["layer.2.block.1.shortcut.weight"],
    "dm_wrn70_16_cifar10": ["layer.0.block.1.shortcut.weight", "layer.0.block.11.conv_0.weight"],
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def full_models() -> dict[str, torch.nn.Module]:
    """Every arch at width 1.0 with 10 classes, built once (construction only, no forward)."""
    return {arch: build_model(arch, 10, 1.0) for arch in ARCHS}


def test_archs_match_config() -> None:
    assert ARCHS == config.ARCHS
    assert set(ARCHS) == set(REFERENCE_PARAMS) == set(REFERENCE_KEYS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_output_shape(arch: str, num_classes: int) -> None:
    model = build_model(arch, num_classes, SMALL).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_imagenet_size(arch: str) -> None:
    """64 x 64 inputs (Tiny-ImageNet) go through every model: the pooling is global."""
    model = build_model(arch, 200, SMALL).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 200)
    assert torch.isfinite(out).all()


#: the pooling call of each reference file at 32 x 32 inputs (ECCV's ResNet-56 pools adaptively)
REFERENCE_POOL = {
    "resnet18": ("avg_pool2d", 4),
    "preact_resnet18": ("avg_pool2d", 4),
    "mobilenet_v2": ("avg_pool2d", 4),
    "resnet56": ("adaptive_avg_pool2d", 1),
    "wrn34_10": ("avg_pool2d", 8),
    "wrn70_16": ("avg_pool2d", 8),
    "wrn34_10_nosub": ("avg_pool2d", 8),
    "wrn34_20_nosub": ("avg_pool2d", 8),
    "dm_wrn28_10_cifar10": ("avg_pool2d", 8),
    "dm_wrn28_10_cifar100": ("avg_pool2d", 8),
    "dm_wrn70_16_cifar10": ("avg_pool2d", 8),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_pooling_is_the_references_at_32(arch: str, monkeypatch) -> None:
    """At 32 x 32 the size-agnostic pooling computes what the reference's fixed pooling does, bit
    for bit (``adaptive_avg_pool2d(x, 1)`` would not: it sums in another order)."""
    calls = []
    for name in ("avg_pool2d", "adaptive_avg_pool2d"):
        real = getattr(torch.nn.functional, name)

        def recording(fmap, size, *args, _name=name, _real=real, **kwargs):
            out = _real(fmap, size, *args, **kwargs)
            calls.append((_name, fmap, size, out))
            return out

        monkeypatch.setattr(torch.nn.functional, name, recording)
    model = build_model(arch, 10, SMALL).eval()
    with torch.no_grad():
        model(torch.rand(3, 3, 32, 32))
    monkeypatch.undo()
    (name, fmap, size, out) = calls[-1]
    ref_name, ref_size = REFERENCE_POOL[arch]
    assert name == ref_name
    reference = getattr(torch.nn.functional, ref_name)(fmap, ref_size)
    assert torch.equal(out, reference)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_param_count(arch: str, full_models: dict[str, torch.nn.Module]) -> None:
    assert n_params(full_models[arch]) == REFERENCE_PARAMS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_param_count_100_classes(arch: str) -> None:
    expected = REFERENCE_PARAMS[arch] + 90 * (FEATURES[arch] + 1)
    assert n_params(build_model(arch, 100, 1.0)) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_keys(arch: str, full_models: dict[str, torch.nn.Module]) -> None:
    state = full_models[arch].state_dict()
    for key, shape in REFERENCE_KEYS[arch].items():
        assert key in state, f"{arch}: missing reference key {key}"
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT_KEYS[arch]:
        assert key not in state, f"{arch}: unexpected key {key}"
    # No normalization constants in the state_dict (wrn70_16 normalizes with fixed constants,
    # outside it, as the published weights expect).
    assert not any("mean" in k and "running_mean" not in k for k in state)
    assert not any(k.endswith("std") for k in state)


@pytest.mark.parametrize("arch", ARCHS)
def test_width_reduces_params(arch: str, full_models: dict[str, torch.nn.Module]) -> None:
    half = build_model(arch, 10, 0.5)
    small = build_model(arch, 10, SMALL)
    assert n_params(small) < n_params(half) < n_params(full_models[arch])
    # Same structure, only narrower: same key names except for shortcuts that width may drop.
    assert set(half.state_dict()) <= set(full_models[arch].state_dict())


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_reaches_input(arch: str) -> None:
    model = build_model(arch, 10, SMALL).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    assert x.grad is not None
    assert x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_state_dict_round_trip() -> None:
    a = build_model("resnet56", 10, SMALL).eval()
    b = build_model("resnet56", 10, SMALL).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_wrn_sub_block1_is_not_used() -> None:
    model = build_model("wrn34_10", 10, SMALL).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for p in model.sub_block1.parameters():
            p.add_(1.0)
        assert torch.equal(model(x), before)


def test_wrn_depth_and_widen_factor() -> None:
    model = WideResNet(depth=16, num_classes=10, widen_factor=4, width=SMALL)
    assert len(model.block1.layer) == 2
    with pytest.raises(ValueError, match="depth = 33"):
        WideResNet(depth=33)


def test_wrn70_16_block_shape_and_normalization() -> None:
    """The DeepMind block pads stride-2 convolutions right and bottom only ("SAME"), and the
    model normalizes its [0, 1] input with CIFAR-100's mean and std."""
    from bmtard.models.wideresnet_swish import CIFAR100_MEAN, CIFAR100_STD, SwishBlock

    block = SwishBlock(4, 8, stride=2).eval()
    x = torch.rand(1, 4, 8, 8)
    with torch.no_grad():
        act = torch.nn.functional.silu(block.batchnorm_0(x))
        manual = torch.nn.functional.conv2d(
            torch.nn.functional.pad(act, (0, 1, 0, 1)), block.conv_0.weight, stride=2
        )
        manual = block.conv_1(torch.nn.functional.silu(block.batchnorm_1(manual)))
        assert torch.equal(block(x), block.shortcut(act) + manual)
    model = build_model("wrn70_16", 100, SMALL).eval()
    grey = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    with torch.no_grad():
        normalized = (grey - model.mean) / model.std
    assert torch.allclose(normalized, torch.zeros_like(normalized))
    assert model.std.flatten().tolist() == pytest.approx(CIFAR100_STD)


def test_unknown_arch() -> None:
    with pytest.raises(ValueError) as info:
        build_model("resnet20")
    message = str(info.value)
    assert "'resnet20'" in message
    for arch in ARCHS:
        assert arch in message


@pytest.mark.parametrize("width", [0, -0.5, math.nan, math.inf, "1", True])
def test_bad_width(width: object) -> None:
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", 10, width)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet18", num_classes, SMALL)  # type: ignore[arg-type]
