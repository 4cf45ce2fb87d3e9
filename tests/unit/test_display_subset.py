"""The reconstruction grid's images: a seeded subset spanning the classes, the same at every call."""

import torch

from bifamily.display_subset import display_images, spread_indices


class ByClass:
    """An image-folder-like data set listed class by class, with a ``labels`` tensor."""

    def __init__(self, classes=4, per_class=50):
        self.labels = torch.arange(classes).repeat_interleave(per_class)
        self.num_classes = classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.full((1, 2, 2), float(index)), int(self.labels[index])


class LabelsOnlyPerItem:
    """Labels only through items (as the procedural shapes: item i has label i % 4)."""

    num_classes = 4

    def __len__(self):
        return 200

    def __getitem__(self, index):
        return torch.full((1, 2, 2), float(index)), index % 4


def test_a_class_sorted_split_gives_every_class_equally():
    data = ByClass()
    picked = spread_indices(data, 16, seed=7)
    counts = torch.bincount(data.labels[picked], minlength=4)
    assert counts.tolist() == [4, 4, 4, 4]
    assert [int(data.labels[i]) for i in picked[:4]] == [0, 1, 2, 3]  # round-robin
    assert len(set(picked)) == 16


def test_the_subset_is_stable_for_a_seed_and_changes_with_it():
    data = ByClass()
    assert spread_indices(data, 16, seed=7) == spread_indices(data, 16, seed=7)
    assert spread_indices(data, 16, seed=7) != spread_indices(data, 16, seed=8)
    images = display_images(data, 16, seed=7)
    assert images.shape == (16, 1, 2, 2)
    assert images[:, 0, 0, 0].long().tolist() == spread_indices(data, 16, seed=7)


def test_labels_read_from_items_when_the_data_set_has_no_labels_attribute():
    data = LabelsOnlyPerItem()
    picked = spread_indices(data, 8, seed=1)
    assert [i % 4 for i in picked] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_unlabelled_data_gets_a_seeded_random_subset_not_the_first_items():
    data = ByClass()
    data.num_classes = 0
    picked = spread_indices(data, 16, seed=3)
    assert picked == spread_indices(data, 16, seed=3) and picked != list(range(16))
    assert len(set(picked)) == 16
    assert spread_indices(data, 500, seed=3) == spread_indices(data, 200, seed=3)  # all of a small set
