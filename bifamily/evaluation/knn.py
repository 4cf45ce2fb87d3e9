"""k-nearest-neighbour classification on frozen features (BigBiGAN, Appendix C).

Features are L2-normalised and compared by cosine similarity. Each test point's k most similar
training points vote for their labels: one vote each, or ``exp(similarity / temperature)`` when a
temperature is given. Classes are ranked by votes; equal votes go to the class of the nearer
neighbour (a class without votes ranks after every class with votes, then by class index), so the
prediction is a deterministic function of the neighbour list.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor


@attrs.frozen
class KnnResult:
    top1: float
    top5: float


def knn_classify(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    k: int = 20,
    num_classes: int,
    temperature: float | None = None,
    chunk: int = 1024,
) -> KnnResult:
    """Top-1/top-5 accuracy of k-NN voting on the test features. Runs on the device of ``train_x``.

    Test points are processed ``chunk`` at a time, so the peak extra memory is one normalised copy of
    the training features plus a (chunk, n_train) similarity block. ``top5`` is 1.0 with 5 classes or
    fewer.
    """
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(f"k must be in [1, {train_x.shape[0]}] (the number of training points), got {k}")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    device = train_x.device
    train = F.normalize(train_x.float(), dim=1)
    train_y = train_y.to(device).long()
    hits1 = hits5 = 0
    for start in range(0, test_x.shape[0], chunk):
        queries = F.normalize(test_x[start : start + chunk].to(device).float(), dim=1)
        similarity, neighbour = (queries @ train.t()).topk(k, dim=1)
        ranking = rank_classes(similarity, train_y[neighbour], num_classes, temperature)
        labels = test_y[start : start + chunk].to(device).long()
        hits1 += int((ranking[:, 0] == labels).sum())
        hits5 += int((ranking[:, :5] == labels[:, None]).any(dim=1).sum())
    return KnnResult(top1=hits1 / test_x.shape[0], top5=hits5 / test_x.shape[0])


def rank_classes(
    similarity: Tensor, neighbour_labels: Tensor, num_classes: int, temperature: float | None
) -> Tensor:
    """Classes by descending vote (ties: nearest neighbour first) for (Q, k) neighbours sorted by similarity."""
    queries, k = neighbour_labels.shape
    weights = torch.ones_like(similarity) if temperature is None else torch.exp(similarity / temperature)
    votes = torch.zeros(queries, num_classes, device=similarity.device, dtype=weights.dtype)
    votes.scatter_add_(1, neighbour_labels, weights)
    ranks = torch.arange(k, device=similarity.device).expand(queries, k)
    nearest = torch.full((queries, num_classes), k, device=similarity.device, dtype=torch.long)
    nearest.scatter_reduce_(1, neighbour_labels, ranks, reduce="amin")
    by_nearest = nearest.argsort(dim=1, stable=True)
    by_votes = votes.gather(1, by_nearest).argsort(dim=1, descending=True, stable=True)
    return by_nearest.gather(1, by_votes)
