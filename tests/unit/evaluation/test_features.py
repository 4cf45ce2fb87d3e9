import pytest
import torch

from bifamily.errors import DataError
from bifamily.evaluation.features import extract_features, require_labels


class ToyImages:
    """Image i is constant i / 100; label i % 3. Counts batched fetches when ``batched``."""

    def __init__(self, size=10, resolution=8, num_classes=3, batched=False):
        self.size, self.resolution, self.num_classes = size, resolution, num_classes
        self.batched_calls = 0
        if batched:
            self.__getitems__ = self._getitems

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return torch.full((1, self.resolution, self.resolution), i / 100), i % 3

    def _getitems(self, indices):
        self.batched_calls += 1
        return [self[i] for i in indices]


def mean_pixel(x):
    return x.mean(dim=(1, 2, 3), keepdim=True)


def test_features_and_labels_come_in_dataset_order():
    features, labels = extract_features(mean_pixel, ToyImages(), n=7, batch_size=3)
    assert features.dtype == torch.float32 and features.shape == (7, 1)
    assert labels.dtype == torch.int64
    torch.testing.assert_close(features[:, 0], torch.arange(7) / 100)
    assert labels.tolist() == [i % 3 for i in range(7)]


def test_all_items_when_n_is_none_and_batched_fetch_is_used():
    dataset = ToyImages(size=10, batched=True)
    features, _ = extract_features(mean_pixel, dataset, n=None, batch_size=4)
    assert features.shape == (10, 1)
    assert dataset.batched_calls == 3


def test_runs_under_inference_mode_and_resizes():
    seen = []

    def fn(x):
        seen.append((x.shape[-1], torch.is_inference_mode_enabled()))
        return x.flatten(1)

    features, _ = extract_features(fn, ToyImages(resolution=8), n=2, resize_to=4)
    assert seen == [(4, True)]
    torch.testing.assert_close(features[1], torch.full((16,), 0.01))  # a constant image stays constant


def test_more_items_than_the_dataset_is_refused():
    with pytest.raises(DataError, match="asked for 11 items"):
        extract_features(mean_pixel, ToyImages(size=10), n=11)


def test_require_labels():
    assert require_labels(ToyImages(num_classes=3), "linear probe") == 3
    with pytest.raises(DataError, match="linear probe .* has no labels"):
        require_labels(ToyImages(num_classes=0), "linear probe")
