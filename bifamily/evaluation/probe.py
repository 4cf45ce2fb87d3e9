"""Linear classification on frozen features, the protocol of BigBiGAN's Appendix A.

A linear classifier initialised to zero is trained with Adam on minibatches of the training features,
with an exponential moving average (EMA) of its weights. A "trainval" split carved deterministically
from the training features selects, by EMA top-1 accuracy, both the learning rate of a sweep and the
checkpoint along the schedule (early stopping); the selected EMA classifier is then scored on the test
features. Along one schedule the latest of equally good checkpoints wins (a small trainval split
saturates, and the longer-trained classifier is the better bet); across learning rates the first wins.

EMA warm-up: the paper averages with decay 0.9999 over 5K-100K steps. Started from the zero init, a
plain EMA after 5K steps still gives the zero weights a share of 0.9999^5000 = 61%, so short schedules
would score an average dominated by the first steps. The decay at update ``t`` (0-based) is therefore
``min(ema_decay, (1 + t) / (10 + t))``: close to a running mean early on, the paper's decay later.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

FeatureTransform = Literal["none", "bn_crelu"]
_EVAL_CHUNK = 8192
_BN_EPS = 1e-5


@attrs.frozen
class ProbeResult:
    """Test accuracies of the selected classifier, its trainval accuracy, learning rate and step."""

    top1: float
    top5: float
    trainval_top1: float
    lr: float
    steps_run: int


@attrs.frozen(eq=False)
class LinearClassifier:
    """logits = x W^T + b, with W (num_classes, F) and b (num_classes,)."""

    weight: Tensor
    bias: Tensor

    @classmethod
    def zeros(cls, in_features: int, num_classes: int, device: torch.device | str = "cpu") -> LinearClassifier:
        return cls(torch.zeros(num_classes, in_features, device=device), torch.zeros(num_classes, device=device))

    def logits(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x, self.weight.t())


@attrs.frozen(eq=False)
class ClassifierFit:
    """The EMA classifier selected on trainval for one learning rate, and the step it was taken at."""

    classifier: LinearClassifier
    trainval_top1: float
    step: int


def bn_crelu(reference: Tensor) -> Callable[[Tensor], Tensor]:
    """Batch norm with statistics fixed from ``reference`` (no affine), then CReLU: width doubles."""
    mean = reference.mean(0)
    inv_std = torch.rsqrt(reference.var(0, unbiased=False) + _BN_EPS)

    def apply(x: Tensor) -> Tensor:
        h = (x - mean) * inv_std
        return torch.cat([h.clamp_min(0), (-h).clamp_min(0)], dim=1)

    return apply


def trainval_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (fit, trainval) of a seeded permutation of range(n); trainval gets round(fraction * n)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"trainval_fraction must be in (0, 1), got {fraction}")
    n_val = min(max(1, round(fraction * n)), n - 1)
    if n_val < 1:
        raise ValueError(f"need at least 2 training samples to hold out a trainval split, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def topk_accuracies(classifier: LinearClassifier, x: Tensor, y: Tensor, ks: Sequence[int]) -> list[float]:
    """Fraction of rows whose label is among the classifier's top-k classes, for each k (capped at C)."""
    num_classes = classifier.bias.shape[0]
    kmax = min(max(ks), num_classes)
    hits = torch.zeros(len(ks), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, x.shape[0], _EVAL_CHUNK):
            logits = classifier.logits(x[start : start + _EVAL_CHUNK])
            ranked = logits.topk(kmax, dim=1).indices
            match = ranked == y[start : start + _EVAL_CHUNK, None]
            for i, k in enumerate(ks):
                hits[i] += int(match[:, : min(k, num_classes)].any(dim=1).sum())
    return [int(h) / x.shape[0] for h in hits]


@torch.inference_mode(False)
@torch.enable_grad()
def fit_linear_classifier(
    fit_x: Tensor,
    fit_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    *,
    num_classes: int,
    lr: float,
    steps: int,
    batch_size: int,
    ema_decay: float,
    eval_every: int,
    seed: int,
) -> ClassifierFit:
    """Train from zero with Adam; keep the EMA checkpoint with the best trainval top-1 (latest on ties).

    The EMA classifier is evaluated every ``eval_every`` steps and after the last one. Minibatches are
    drawn with replacement from a generator seeded with ``seed`` (full batch when ``batch_size`` covers
    the fit split), so every learning rate of a sweep sees the same batches. Gradients are on even
    when the caller runs under ``inference_mode`` (as evaluation does).
    """
    if fit_x.is_inference():  # features made under inference_mode cannot be saved for backward
        fit_x = fit_x.clone()
    device = fit_x.device
    model = LinearClassifier.zeros(fit_x.shape[1], num_classes, device)
    ema = LinearClassifier.zeros(fit_x.shape[1], num_classes, device)
    params = [model.weight.requires_grad_(), model.bias.requires_grad_()]
    optimizer = torch.optim.Adam(params, lr=lr, fused=True)
    generator = torch.Generator().manual_seed(seed)
    full_batch = batch_size >= fit_x.shape[0]
    best: ClassifierFit | None = None
    for t in range(steps):
        if full_batch:
            x, y = fit_x, fit_y
        else:
            index = torch.randint(fit_x.shape[0], (batch_size,), generator=generator).to(device)
            x, y = fit_x[index], fit_y[index]
        loss = F.cross_entropy(model.logits(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            weight = 1.0 - min(ema_decay, (1.0 + t) / (10.0 + t))
            ema.weight.lerp_(model.weight, weight)
            ema.bias.lerp_(model.bias, weight)
        if (t + 1) % eval_every == 0 or t + 1 == steps:
            (accuracy,) = topk_accuracies(ema, val_x, val_y, (1,))
            if best is None or accuracy >= best.trainval_top1:
                snapshot = LinearClassifier(ema.weight.clone(), ema.bias.clone())
                best = ClassifierFit(snapshot, accuracy, t + 1)
    assert best is not None  # steps >= 1 is checked by the caller
    return best


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    num_classes: int,
    steps: int = 5000,
    lrs: Sequence[float] = (0.01,),
    batch_size: int = 256,
    ema_decay: float = 0.9999,
    trainval_fraction: float = 0.1,
    eval_every: int | None = None,
    feature_transform: FeatureTransform = "none",
    seed: int = 0,
) -> ProbeResult:
    """Linear probe of frozen features (N, F) with int labels in [0, num_classes).

    ``eval_every`` defaults to a tenth of ``steps``. ``feature_transform="bn_crelu"`` standardises the
    features with statistics of the fit split, then applies CReLU (as BigBiGAN's evaluation does);
    ``"none"`` feeds the raw features. The first learning rate in ``lrs`` wins trainval ties. Runs on
    the device of ``train_x``; ``top5`` is 1.0 when there are 5 classes or fewer.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not lrs:
        raise ValueError("lrs must name at least one learning rate")
    if feature_transform not in ("none", "bn_crelu"):
        raise ValueError(f"feature_transform must be 'none' or 'bn_crelu', got {feature_transform!r}")
    device = train_x.device
    train_x, test_x = train_x.float(), test_x.to(device).float()
    train_y, test_y = _check_labels(train_y, num_classes).to(device), _check_labels(test_y, num_classes).to(device)
    fit_index, val_index = trainval_split(train_x.shape[0], trainval_fraction, seed)
    fit_index, val_index = fit_index.to(device), val_index.to(device)
    fit_x, val_x = train_x[fit_index], train_x[val_index]
    if feature_transform == "bn_crelu":
        transform = bn_crelu(fit_x)
        fit_x, val_x, test_x = transform(fit_x), transform(val_x), transform(test_x)
    fit_y, val_y = train_y[fit_index], train_y[val_index]
    selected_lr, best = lrs[0], None
    for lr in lrs:
        fit = fit_linear_classifier(
            fit_x,
            fit_y,
            val_x,
            val_y,
            num_classes=num_classes,
            lr=lr,
            steps=steps,
            batch_size=batch_size,
            ema_decay=ema_decay,
            eval_every=eval_every or max(1, steps // 10),
            seed=seed,
        )
        if best is None or fit.trainval_top1 > best.trainval_top1:
            selected_lr, best = lr, fit
    assert best is not None
    top1, top5 = topk_accuracies(best.classifier, test_x, test_y, (1, 5))
    return ProbeResult(top1=top1, top5=top5, trainval_top1=best.trainval_top1, lr=selected_lr, steps_run=best.step)


def _check_labels(labels: Tensor, num_classes: int) -> Tensor:
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels
