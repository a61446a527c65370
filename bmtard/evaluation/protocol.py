"""The evaluation protocol (spec section 6.2) with its sanity checks, on any model: a loop over
the attacks of ``bmtard.config.attack_table`` (FGSM, PGD_SAT, PGD_TRADES, CW_inf, AutoAttack
standard by the reference pyautoattack code), the attacks with a part of their own found there by
their role.

Every accuracy is measured in fp32 with the model in eval mode, on the first ``n_images`` test
images, at L-inf eps (in 1/255): clean, and each attack of ``evaluate.attacks``. Weighted robust
accuracy per attack = (clean + attack) / 2; worst case = correct under every attack run.
Accuracies in %. The caller owns the per-batch resume state (``evaluation_key``,
``bmtard.evaluation.runner.ResumeState``): it drops it once the results are written.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bmtard.attacks.autoattack import AutoAttackRun, autoattack_version
from bmtard.attacks.cw import cw_inf
from bmtard.attacks.fgsm import fgsm
from bmtard.attacks.pgd import pgd_ce
from bmtard.config import attack_table
from bmtard.config.attack_table import BY_NAME, NAMES, pixels
from bmtard.config.schema import EvaluateConfig
from bmtard.core.io import digest
from bmtard.core.provenance import loaded_code_sha256
from bmtard.data.loader import to_tensor
from bmtard.data.splits import Split
from bmtard.evaluation import sanity
from bmtard.evaluation.accuracy import percent
from bmtard.evaluation.runner import Attack, ResumeState, Runner, Task, pgd_attack

log = logging.getLogger(__name__)


def protocol_attack(name: str, eps: float, cw_kappa: float = 50.0, seed: int = 0) -> Attack:
    """The named attack of the protocol (``bmtard.config.attack_table``) at eps (1/255)."""
    if name not in BY_NAME:
        raise ValueError(f"attack {name!r}: allowed are {', '.join(NAMES)}")
    a, e = BY_NAME[name], pixels(eps)
    if a.loss == "autoattack":  # its own callable: it keeps the reference code's flags
        return AutoAttackRun(e, version="standard", seed=seed)
    if a.step_size is None:  # one step of eps from x
        return functools.partial(fgsm, eps=e)
    step = pixels(a.step_size)
    if a.loss == "cw":
        return functools.partial(cw_inf, eps=e, step_size=step, steps=a.steps, kappa=cw_kappa)
    return functools.partial(pgd_ce, eps=e, step_size=step, steps=a.steps, init=a.start)


def transferred(source: nn.Module, eps: float) -> Attack:
    """The table's transfer attack (PGD_SAT) crafted on ``source`` (white-box there), then shown
    to the evaluated model."""
    craft = protocol_attack(attack_table.the("transfer"), eps)

    def attack(model: nn.Module, x, y):
        return craft(source, x, y)

    return attack


def _settings(attack: Attack | None) -> tuple:
    """What identifies an attack's settings: a partial's function and keywords (any other
    callable only matches itself)."""
    if attack is None:
        return ("clean",)
    if isinstance(attack, functools.partial):
        return (attack.func, tuple(sorted(attack.keywords.items())))
    return ("callable", id(attack))


def data_digest(split: Split, n: int) -> str:
    """SHA-256 of the first ``n`` images and labels of ``split``."""
    h = hashlib.sha256(split.images[:n].tobytes())
    h.update(split.labels[:n].tobytes())
    return h.hexdigest()


@dataclass
class Evaluation:
    """Everything one run of the protocol measured."""

    n_images: int
    accuracy: dict[str, float]
    weighted_robust: dict[str, float]
    eps_curve: dict[str, float]
    per_class: dict[str, Any]
    checks: list[sanity.Check]
    autoattack_warnings: list[str] | None
    protocol: dict[str, Any]

    def metrics(self) -> dict[str, Any]:
        """What runs are compared by (DVC metrics: the columns of ``dvc exp show``), flat so that
        the columns have short names: the accuracy (%) clean and under each attack, ``w_robust``
        = (clean + AutoAttack) / 2 where AutoAttack ran, and ``sanity``: "passed" or "failed"
        (the gradient-masking checks, where they ran)."""
        out: dict[str, Any] = {k: v for k, v in self.accuracy.items() if k != "worst_case"}
        headline = attack_table.the("w_robust")
        if headline in self.weighted_robust:
            out["w_robust"] = self.weighted_robust[headline]
        if self.checks:
            out["sanity"] = "passed" if sanity.summary(self.checks)["passed"] else "failed"
        return out

    def details(self) -> dict[str, Any]:
        """Every number (a file beside the metrics, and the model card): the accuracy (%) under
        each attack and under all of them (``worst_case``), the weighted robust accuracy of each,
        the eps-curve, the worst class, and each sanity check with the values it compared
        (per-class in full is in the card)."""
        out: dict[str, Any] = {
            "accuracy": self.accuracy,
            "weighted_robust": self.weighted_robust,
            "eps_curve": self.eps_curve,
            "per_class": {k: v for k, v in self.per_class.items() if k.startswith("worst")},
        }
        if self.checks:
            out["sanity"] = sanity.summary(self.checks)
        return out


def per_class(
    labels: torch.Tensor, clean: torch.Tensor, robust: torch.Tensor, names: list[str]
) -> dict[str, Any]:
    """Clean and robust accuracy (%) of each class, and the worst class of each."""
    out: dict[str, Any] = {"clean": {}, "robust": {}}
    for c, name in enumerate(names):
        sel = labels == c
        if sel.any():
            out["clean"][name] = percent(clean[sel])
            out["robust"][name] = percent(robust[sel])
    for kind in ("clean", "robust"):
        if out[kind]:
            worst = min(out[kind], key=out[kind].get)
            out[f"worst_{kind}"] = out[kind][worst]
            out[f"worst_{kind}_class"] = worst
    return out


def evaluation_key(
    cfg: EvaluateConfig,
    test: Split,
    seed: int,
    model_id: str,
    transfer_id: str | None = None,
) -> str:
    """What an evaluation's resume state is keyed by: the model and the transfer source (e.g.
    their checkpoints' SHA-256), the evaluated images, the protocol, the seed and the code, so
    that a changed model or changed code never reuses old results."""
    n = test.n_first(cfg.n_images)
    code = loaded_code_sha256()
    return digest([model_id, transfer_id, data_digest(test, n), asdict(cfg), seed, code])


def evaluate_model(
    model: nn.Module,
    test: Split,
    cfg: EvaluateConfig,
    device: torch.device,
    *,
    seed: int = 0,
    state: ResumeState | None = None,
    transfer_source: nn.Module | None = None,
    class_names: list[str] | None = None,
    on_batch=None,
) -> Evaluation:
    """Run the protocol, the eps-curve and the sanity checks on ``model`` (put in eval mode,
    fp32): a loop over ``cfg.attacks`` in the table's terms. ``state``: the caller's per-batch
    resume state (``evaluation_key``), which it drops once the results are written."""
    model = model.float().eval()
    # the reference AutoAttack runs the ensemble and the sanity checks' Square attack: fail now,
    # before any work, if it is missing
    ensemble = set(attack_table.with_role("ensemble"))
    needs_aa = bool(ensemble & set(cfg.attacks)) or cfg.sanity.enabled
    aa_version = autoattack_version() if needs_aa else None
    n = test.n_first(cfg.n_images)
    run = Runner(
        model,
        test,
        batch_size=cfg.batch_size,
        device=device,
        seed=seed,
        state=state,
        on_batch=on_batch,
    )
    masks = {"clean": run.mask(Task("clean", None, n))}
    computed = {_settings(None): "clean"}  # attack settings -> the mask that holds them
    warnings: list[str] | None = None
    for name in cfg.attacks:
        attack = protocol_attack(name, cfg.eps, cfg.cw_kappa, seed)
        computed[_settings(attack)] = name
        masks[name] = run.mask(Task(name, attack, n))
        if name in ensemble:  # the reference code's own flags, as it logged them
            warnings = list(getattr(attack, "warnings", []))
        log.info("%s: %.2f%%", name, percent(masks[name]))
    worst = masks["clean"].clone()
    for name in cfg.attacks:
        worst &= masks[name]
    accuracy = {k: percent(m) for k, m in masks.items()}
    if cfg.attacks:
        accuracy["worst_case"] = percent(worst)
    weighted = {a: (accuracy["clean"] + accuracy[a]) / 2 for a in cfg.attacks}

    curve = {}
    for e in cfg.eps_curve:  # eps 0 is the clean mask; at eps 8, step eps/4 is PGD_SAT's
        attack = pgd_attack(e) if e > 0 else None
        same = computed.get(_settings(attack))
        mask = masks[same] if same else run.mask(Task(f"eps_curve@{e:g}", attack, n))
        curve[e] = percent(mask)
    labels = torch.from_numpy(test.labels[:n])
    names = class_names or [str(c) for c in range(int(test.labels.max()) + 1)]
    classes = per_class(labels, masks["clean"], worst, names)

    checks = []
    if cfg.sanity.enabled:
        checks = run_sanity(run, cfg, masks, curve, warnings, transfer_source, n)
    for c in checks:
        if c.passed is False:
            log.warning("SANITY CHECK FAILED: %s: %s", c.name, c.detail)
        else:
            log.info("sanity %s: %s", c.name, c.detail)
    protocol = {
        "threat_model": "Linf",
        "eps": cfg.eps,
        "eps_unit": "1/255",
        "n_images": n,
        "precision": "fp32",
        "attacks": list(cfg.attacks),
        "cw_kappa": cfg.cw_kappa,
        "seed": seed,
        "eps_curve": "PGD-20, step eps/4, uniform start",
        "data_sha256": data_digest(test, n),  # of the evaluated images and labels
    }
    if aa_version is not None:
        protocol["autoattack"] = {
            "package": "pyautoattack",
            "version": aa_version,
            "mode": "standard",
        }
    return Evaluation(
        n,
        accuracy,
        weighted,
        {f"{e:g}": v for e, v in curve.items()},
        classes,
        checks,
        warnings,
        protocol,
    )


def run_sanity(
    run: Runner,
    cfg: EvaluateConfig,
    masks: dict[str, torch.Tensor],
    curve: dict[float, float],
    aa_warnings: list[str] | None,
    transfer_source: nn.Module | None,
    n: int,
) -> list[sanity.Check]:
    """The sanity checks on the first ``cfg.sanity.n_images`` of the ``n`` evaluated images."""
    s = cfg.sanity
    m = n if s.n_images is None else min(s.n_images, n)
    sub = {k: percent(v[:m]) for k, v in masks.items()}
    white = {k: sub[k] for k in sanity.WHITE_BOX if k in sub}
    pgds = {k: sub[k] for k in attack_table.with_role("more_steps") if k in sub}
    ensemble = [sub[k] for k in attack_table.with_role("ensemble") if k in sub]

    big = percent(run.mask(Task("large_eps", pgd_attack(s.large_eps), m)))
    strong_step = 2.5 * cfg.eps / s.strong_steps  # Madry et al.'s rule: 2.5 eps over the steps
    strong = percent(
        run.mask(
            Task(
                "strong_pgd", pgd_attack(cfg.eps, s.strong_steps, strong_step), m, s.strong_restarts
            )
        )
    )
    square_attack = AutoAttackRun(
        pixels(cfg.eps),
        version="custom",
        attacks=["square"],
        square_queries=s.square_queries,
        seed=run.seed,
    )
    square = percent(run.mask(Task("square", square_attack, m)))
    transfer = None
    if s.transfer and transfer_source is not None:
        transfer = percent(run.mask(Task("transfer", transferred(transfer_source, cfg.eps), m)))

    k = min(s.gradient_samples, n)
    x = to_tensor(torch.from_numpy(run.split.images[:k]).to(run.device))
    y = torch.from_numpy(run.split.labels[:k]).to(run.device)
    return [
        sanity.eps_monotone(curve, s.tolerance),
        sanity.large_eps(big, s.large_eps, s.large_eps_max_acc),
        sanity.more_steps(strong, pgds, s.tolerance),
        sanity.autoattack_not_above(min(ensemble, default=None), white, s.tolerance),
        sanity.black_box_not_below(square, white, s.tolerance),
        sanity.transfer_not_below(transfer, white, s.tolerance),
        sanity.gradients(run.model, x, y),
        sanity.autoattack_flags(aa_warnings),
    ]
