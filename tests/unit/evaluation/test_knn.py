import pytest
import torch

from bifamily.evaluation.knn import knn_classify, rank_classes


def clusters(n, seed, num_classes=4, dim=8):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    return torch.eye(dim)[labels] + 0.05 * torch.randn(n, dim, generator=generator), labels


def test_separable_features_are_classified_perfectly():
    result = knn_classify(*clusters(200, 0), *clusters(50, 1), k=5, num_classes=4)
    assert result.top1 == 1.0 and result.top5 == 1.0


def test_cosine_similarity_ignores_feature_scale_and_chunking():
    train, test = clusters(100, 0), clusters(40, 1)
    scaled = (test[0] * torch.linspace(0.1, 10, 40)[:, None], test[1])
    baseline = knn_classify(*train, *test, k=7, num_classes=4)
    assert knn_classify(*train, *scaled, k=7, num_classes=4, chunk=3) == baseline


def test_majority_vote_versus_similarity_weighted_vote():
    # The nearest neighbour is class 0; the next two, less similar, are class 1.
    train = torch.tensor([[1.0, 0.0], [0.5, 0.866], [0.45, 0.893], [-1.0, 0.0]])
    train_y = torch.tensor([0, 1, 1, 2])
    test, test_y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert knn_classify(train, train_y, test, test_y, k=3, num_classes=3).top1 == 0.0
    assert knn_classify(train, train_y, test, test_y, k=3, num_classes=3, temperature=0.05).top1 == 1.0


def test_vote_ties_go_to_the_nearer_neighbour_then_to_the_lower_class():
    similarity = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    ranking = rank_classes(similarity, torch.tensor([[3, 1, 1, 3]]), num_classes=5, temperature=None)
    assert ranking.tolist() == [[3, 1, 0, 2, 4]]


def test_top5_counts_the_five_best_ranked_classes():
    # Ten classes, one training point each on a circle; the query sits next to class 0's point.
    angles = torch.arange(10) * 0.3
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    test = torch.tensor([[1.0, 0.0]])
    result = knn_classify(train, torch.arange(10), test, torch.tensor([4]), k=10, num_classes=10)
    assert result.top1 == 0.0 and result.top5 == 1.0
    far = knn_classify(train, torch.arange(10), test, torch.tensor([5]), k=10, num_classes=10)
    assert far.top5 == 0.0


def test_k_larger_than_the_training_set_is_refused():
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(*clusters(4, 0), *clusters(4, 1), k=5, num_classes=4)
