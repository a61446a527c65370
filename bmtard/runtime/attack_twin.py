"""The student as the training attack differentiates it, where the attack's fast path asks for
it (``run.attack_fold_bn``, ``run.attack_no_param_grads``, ``run.attack_compile``): a *twin*, a
module of the student's structure that reads the student's own parameter and buffer storage, so
that every optimizer step and every BatchNorm update is in it with nothing copied.

- **No parameter gradients**: the twin's parameters are the student's tensors detached (the same
  storage, ``requires_grad`` off), so the attack's graph keeps no tensor for a weight gradient.
  The input gradient is the same computation: bit for bit the student's.
- **BatchNorm folded**: while the student is attacked in eval mode, each BatchNorm that follows a
  convolution (found by tracing the student with ``torch.fx``; a convolution whose output only
  that BatchNorm reads) becomes part of a convolution with a bias,
  ``W' = W * gamma / sqrt(var + eps)``, ``b' = beta + (b - mean) * gamma / sqrt(var + eps)``
  (``torch.nn.utils.fusion.fuse_conv_bn_weights``), recomputed in place before every attack.
  One pass fewer over every activation, at the cost of float rounding (the tolerance:
  tests/test_attack_fast_path.py). A BatchNorm before a convolution (pre-activation blocks)
  stays as it is; an attack in train mode (ARD, DGAD, IGDM: BatchNorm on batch statistics) is
  never folded.
- **Compiled**: the twin's forward compiled once (``nn.Module.compile``; AOTAutograd compiles
  its backward too), with ``mode="reduce-overhead"`` (CUDA graphs) for ``cudagraphs``: every step
  of every attack replays one graph, since the twin (and its tensors) never change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from bmtard.models._pooling import global_avg_pool

#: the BatchNorms that can be folded in eval mode (a SyncBatchNorm, under DDP, is one there)
BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
#: ``run.attack_compile``: the compile mode of each compiled choice (None: torch's default)
COMPILE_MODES: dict[str, str | None] = {"inductor": None, "cudagraphs": "reduce-overhead"}


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a torch.fx graph over its own submodules (the pooling helper a leaf: it reads
    the input's shape)."""
    graph = fx.Tracer(autowrap_functions=(global_avg_pool,)).trace(model)
    return fx.GraphModule(model, graph)


def conv_bn_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """The (convolution, BatchNorm) nodes of ``gm`` where the BatchNorm reads the convolution's
    output and nothing else does, and the BatchNorm keeps running statistics."""
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], BATCH_NORMS):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        bn = modules[node.target]
        if isinstance(modules[src.target], nn.Conv2d) and bn.track_running_stats:
            pairs.append((src, node))
    return pairs


def _set(root: nn.Module, name: str, kind: str, value: torch.Tensor | None) -> None:
    """Rebind parameter or buffer ``name`` (dotted) of ``root`` to ``value``; nothing where the
    traced graph has no such module (one the forward never calls, as WRN-34-10's sub_block1)."""
    path, _, attr = name.rpartition(".")
    try:
        owner = root.get_submodule(path) if path else root
    except AttributeError:
        return
    getattr(owner, kind)[attr] = value


@dataclass
class Twin:
    """The twin of ``student``: ``module`` runs the attack; ``folds`` pairs each folded
    convolution of the twin with the student's convolution and BatchNorm it is made of."""

    student: nn.Module
    module: nn.Module
    folds: list[tuple[nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]] = field(default_factory=list)

    @torch.no_grad()
    def refresh(self) -> None:
        """Follow the student: its mode, and the folded weights from its current weights and
        running statistics (in place: a compiled twin keeps its graph)."""
        self.module.train(self.student.training)
        for mine, conv, bn in self.folds:
            w, b = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
            mine.weight.copy_(w)
            mine.bias.copy_(b)


def make_twin(
    student: nn.Module, *, fold: bool, param_grads: bool, compile_mode: str = "eager"
) -> Twin:
    """The twin of ``student`` (not a DDP wrapper): its parameters the student's storage
    (``requires_grad`` = ``param_grads``), its buffers the student's tensors themselves, each
    foldable BatchNorm folded where ``fold``; compiled per ``compile_mode`` (eager: not; inductor,
    cudagraphs)."""
    gm = copy.deepcopy(trace(student))
    for name, p in student.named_parameters():
        _set(gm, name, "_parameters", nn.Parameter(p.detach(), requires_grad=param_grads))
    for name, b in student.named_buffers():
        _set(gm, name, "_buffers", b)
    folds = []
    if fold:
        for conv_node, bn_node in conv_bn_pairs(gm):
            conv: nn.Conv2d = student.get_submodule(conv_node.target)
            bn: nn.BatchNorm2d = student.get_submodule(bn_node.target)
            mine = copy.deepcopy(gm.get_submodule(conv_node.target))
            weight = torch.empty_like(conv.weight)  # the student's layout (channels_last too)
            mine.weight = nn.Parameter(weight, requires_grad=param_grads)
            mine.bias = nn.Parameter(
                torch.empty(conv.out_channels, dtype=weight.dtype, device=weight.device),
                requires_grad=param_grads,
            )
            parent, _, attr = conv_node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, mine)
            bn_node.replace_all_uses_with(conv_node)
            gm.graph.erase_node(bn_node)
            folds.append((mine, conv, bn))
        gm.delete_all_unused_submodules()
        gm.recompile()
    twin = Twin(student, gm, folds)
    twin.refresh()
    if compile_mode != "eager":
        gm.compile(mode=COMPILE_MODES[compile_mode])
    return twin
