import socket
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid_fid

from bifamily.errors import BifamilyError
from bifamily.evaluation.feature_networks import (
    INCEPTION_ENV,
    INCEPTION_FILE,
    RandomConvFeatures,
    load_inception,
)
from bifamily.evaluation import fid as fid_module
from bifamily.evaluation.fid import (
    feature_stats,
    fid_from_features,
    fid_from_stats,
    generated_features,
    inception_score,
    kid_from_features,
    reference_stats,
)


def gaussian(n, mean, cov, seed):
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


def random_spd(dim, seed):
    a = np.random.default_rng(seed).normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def psd_sqrt(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def closed_form_fid(mu1, s1, mu2, s2):
    """Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2), which needs only symmetric square roots."""
    root1 = psd_sqrt(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(psd_sqrt(root1 @ s2 @ root1)))


def test_fid_of_a_set_with_itself_is_zero():
    features = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    scale = np.trace(feature_stats(features)[1])
    assert abs(fid_from_features(features, features)) < 1e-6 * scale


def test_fid_matches_the_closed_form_for_exact_gaussian_statistics():
    mu1, mu2 = np.arange(6.0), np.ones(6)
    s1, s2 = random_spd(6, 1), random_spd(6, 2)
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(closed_form_fid(mu1, s1, mu2, s2), rel=1e-6)


def test_fid_of_large_gaussian_samples_approaches_the_closed_form():
    mu1, mu2 = np.zeros(4), np.array([1.0, -1.0, 0.5, 0.0])
    s1, s2 = random_spd(4, 3), random_spd(4, 4)
    a, b = gaussian(50_000, mu1, s1, 5), gaussian(50_000, mu2, s2, 6)
    assert fid_from_features(a, b) == pytest.approx(closed_form_fid(mu1, s1, mu2, s2), rel=0.03, abs=0.01)


def test_kid_is_zero_for_a_set_with_itself_and_positive_for_a_shifted_set():
    a = np.random.default_rng(0).normal(size=(500, 16))
    same = kid_from_features(a, a, num_subsets=20, max_subset_size=200)
    shifted = kid_from_features(a, a + 1.0, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.01 * shifted
    assert shifted > 0.1


def test_kid_is_reproducible_and_leaves_numpys_global_generator_alone():
    a, b = np.random.default_rng(0).normal(size=(2, 300, 8))
    np.random.seed(7)
    expected_next = np.random.rand()
    np.random.seed(7)
    first = kid_from_features(a, b, num_subsets=5, max_subset_size=100)
    assert np.random.rand() == expected_next
    assert kid_from_features(a, b, num_subsets=5, max_subset_size=100) == first


@pytest.mark.parametrize("whole_kernel_rows", [4096, 0], ids=["kernels-once", "clean-fid-per-subset"])
@pytest.mark.parametrize("sizes", [(300, 300, 100), (120, 450, 1000)], ids=["subsets", "capped-by-smaller-set"])
def test_kid_is_clean_fids_kernel_distance_on_the_same_draws(monkeypatch, whole_kernel_rows, sizes):
    monkeypatch.setattr(fid_module, "WHOLE_KERNEL_ROWS", whole_kernel_rows)
    rows_a, rows_b, subset = sizes
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(rows_a, 12)), rng.normal(0.1, 1.2, size=(rows_b, 12))
    np.random.seed(11)
    expected = cleanfid_fid.kernel_distance(a, b, num_subsets=9, max_subset_size=subset)
    assert kid_from_features(a, b, num_subsets=9, max_subset_size=subset, seed=11) == pytest.approx(expected, rel=1e-12)


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = inception_score(torch.zeros(100, 10), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_of_confident_distinct_classes_is_the_number_of_classes():
    logits = 100.0 * torch.eye(10).repeat(10, 1)  # every split holds each class once
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_missing_inception_weights_name_the_file_its_source_and_the_variable(monkeypatch, no_network):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(BifamilyError) as raised:
        load_inception(None)
    message = str(raised.value)
    assert INCEPTION_FILE in message and INCEPTION_ENV in message and "\n" not in message
    assert "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" in message


def test_a_wrong_weights_path_is_reported(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path))  # a folder without the file
    with pytest.raises(BifamilyError, match=f"not found at {tmp_path / INCEPTION_FILE}"):
        load_inception()


class FakeInceptionLayers(torch.nn.Module):
    """Feature 0 is the mean input value, feature 1 the input width; the rest zero."""

    def forward(self, x):
        n = x.shape[0]
        summary = torch.stack([x.mean(dim=(1, 2, 3)), torch.full((n,), float(x.shape[-1]))], dim=1)
        return torch.cat([summary, torch.zeros(n, 2046)], dim=1).view(n, 2048, 1, 1)


class FakeInception(torch.nn.Module):
    """The layout of clean-fid's TorchScript archive: ``layers`` then an ``output`` linear layer."""

    def __init__(self):
        super().__init__()
        self.layers = FakeInceptionLayers()
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, x):
        return self.output(self.layers(x).view(-1, 2048))


@pytest.fixture
def fake_inception_folder(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(FakeInception()), str(tmp_path / INCEPTION_FILE))
    return tmp_path


def test_inception_wrapper_resizes_normalises_and_returns_logits(fake_inception_folder, monkeypatch, no_network):
    monkeypatch.setenv(INCEPTION_ENV, str(fake_inception_folder))
    network = load_inception()
    white = torch.full((2, 1, 16, 16), 255, dtype=torch.uint8)  # grey input, repeated to RGB
    features, logits = network(white)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    torch.testing.assert_close(features[:, 0], torch.full((2,), 127 / 128))  # (255 - 128) / 128
    torch.testing.assert_close(features[:, 1], torch.full((2,), 299.0))
    expected_logits = features @ network.base.output.weight.t()  # no output bias, as in the original IS
    torch.testing.assert_close(logits, expected_logits)
    float_features, _ = network(torch.ones(2, 1, 16, 16))  # [-1, 1] input: 1.0 is white
    torch.testing.assert_close(float_features, features)


def test_random_conv_features_are_deterministic_and_accept_both_pixel_ranges():
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    network = RandomConvFeatures(channels=3, seed=1, dim=8)
    features, logits = network(images)
    assert features.shape == (3, 8) and logits is None
    torch.testing.assert_close(RandomConvFeatures(channels=3, seed=1, dim=8)(images)[0], features)
    torch.testing.assert_close(network(images.float() / 127.5 - 1)[0], features)
    assert not torch.allclose(RandomConvFeatures(channels=3, seed=2, dim=8)(images)[0], features)


class CountingNetwork:
    def __init__(self, inner):
        self.inner, self.name, self.resizer, self.calls = inner, inner.name, inner.resizer, 0

    def __call__(self, images):
        self.calls += 1
        return self.inner(images)

    def to(self, device):
        self.inner.to(device)
        return self


class NoiseImages:
    num_classes = 0

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(i)).tanh(), 0


def test_reference_statistics_are_cached_by_key(tmp_path):
    network = CountingNetwork(RandomConvFeatures(channels=1, seed=0, dim=8))
    key = {"dataset": "noise", "resolution": 8}
    mu, sigma, features = reference_stats(NoiseImages(), network, 30, tmp_path, key, batch_size=16)
    assert network.calls == 2 and features.shape == (30, 8) and features.dtype == np.float32
    np.testing.assert_allclose(mu, features.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-6)
    again = reference_stats(NoiseImages(), network, 30, tmp_path, key, batch_size=16)
    assert network.calls == 2
    for cached, computed in zip(again, (mu, sigma, features)):
        np.testing.assert_array_equal(cached, computed)
    reference_stats(NoiseImages(), network, 20, tmp_path, key, batch_size=16)  # another n: recomputed
    assert network.calls == 4 and len(list(tmp_path.glob("reference-*.npz"))) == 2


def test_generated_features_batch_the_sampler():
    requested = []

    def sample(k):
        requested.append(k)
        return torch.rand(k, 1, 8, 8) * 2 - 1

    features, logits = generated_features(sample, 10, 4, RandomConvFeatures(channels=1, seed=0, dim=8), "cpu")
    assert requested == [4, 4, 2] and features.shape == (10, 8) and logits is None


def test_features_with_a_dead_unit_give_a_finite_distance_without_a_warning():
    """A feature that never varies (a ReLU unit that never fires) makes the covariances singular."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(0.5, 1.0, size=(200, 8))
    a[:, 3] = b[:, 3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distance = fid_from_features(a, b)
    assert np.isfinite(distance) and distance == pytest.approx(fid_from_features(a[:, [0, 1, 2, 4, 5, 6, 7]], b[:, [0, 1, 2, 4, 5, 6, 7]]), rel=1e-3)
