"""The sample judge: coverage maths, the ordering real > blurred > noise, determinism, the cache (reuse,
damaged and mismatched files rebuilt) and the refusal of a data set without labels."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bifamily_datasets.procedural import ProceduralConfig
from bifamily_metrics.judge import JudgeConfig
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bifamily.checkpoint import read_snapshot
from bifamily.context import BuildContext
from bifamily.errors import DataError, RecipeError
from bifamily.evaluation.judge import JudgeArchitecture, JudgeTraining, coverage, load_images, new_judge, train_judge
from bifamily.evaluation.judge_cache import save_judge
from bifamily.evaluation.metrics import check_labels
from bifamily.metric_interfaces import MetricContext, Subject
from bifamily.interfaces import LatentPrior
from bifamily.plugins import load_plugins
from bifamily.recipe import load

QUICKSTART = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.toml"
CTX = BuildContext(resolution=16, channels=1, latent_dim=4)
DATA = ProceduralConfig(resolution=16, channels=1, classes=4, train_size=2000, test_size=400)
FAST = dict(samples=200, real_images=200, train_images=2000, steps=150, batch_size=64, width=8, kid_subsets=10,
            kid_subset_size=100)


class Replay(nn.Module):
    """A generator that ignores z and hands out ``images`` in order."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images, self.offset = images, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.images[self.offset : self.offset + z.shape[0]]
        self.offset += z.shape[0]
        return out


class ZeroPrior(LatentPrior):
    dim = 4

    def sample(self, n, *, generator=None, device="cpu"):
        return torch.zeros(n, self.dim, device=device)


@pytest.fixture(scope="module")
def splits():
    return DATA.build(CTX, "train"), DATA.build(CTX, "test")


@pytest.fixture(scope="module")
def held_out(splits):
    """Test-split images (the generator's "samples" in these tests) and their labels."""
    return load_images(splits[1], list(range(200)), 16)


def metric(cache_dir, **settings):
    config = JudgeConfig(**{**FAST, **settings, "cache_dir": str(cache_dir)})
    return config.build(MetricContext(model=CTX, seed=0, train_samples=5000, test_samples=2000, feature_network=None))


def subject(splits, images):
    train, test = splits
    return Subject(Replay(images), nn.Identity(), ZeroPrior(), CTX, train, test, {"kind": "procedural-test"}, 100, 0)


def blurred(images):
    """A 5x5 box blur, twice: shapes become blobs."""
    for _ in range(2):
        images = F.avg_pool2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return images


@pytest.fixture(scope="module")
def judged(splits, held_out, tmp_path_factory):
    """Values of real held-out images, a blurred copy and noise, by one cached judge."""
    cache = tmp_path_factory.mktemp("judges")
    images = held_out[0]
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    judge = metric(cache, confidence=0.5)
    values = {name: judge.compute(subject(splits, x)).values for name, x in
              (("real", images), ("blurred", blurred(images)), ("noise", noise))}
    return cache, values


def test_coverage_of_known_histograms():
    assert coverage([7, 0, 0, 0]) == 0.0
    assert coverage([3, 3]) == 1.0
    assert coverage([1, 1, 0, 0]) == pytest.approx(0.5, abs=1e-15)
    assert coverage([5]) == 1.0


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=12).filter(lambda counts: sum(counts) > 0))
def test_coverage_lies_in_0_1_and_is_1_only_for_a_uniform_histogram(counts):
    value = coverage(counts)
    assert 0.0 <= value <= 1.0
    assert math.isclose(value, 1.0, abs_tol=1e-12) == (len(set(counts)) == 1)


def test_real_images_are_judged_above_blurred_ones_above_noise(judged):
    _, values = judged
    real, blur, noise = values["real"], values["blurred"], values["noise"]
    assert real["judge_accuracy"] >= 0.7, values
    assert real["judge_recognisable"] > blur["judge_recognisable"] > noise["judge_recognisable"], values
    assert real["judge_fd"] < blur["judge_fd"] < noise["judge_fd"], values
    assert real["judge_kid"] < noise["judge_kid"]
    for value in values.values():
        assert 0.0 <= value["judge_coverage"] <= 1.0
        assert value["judge_recognisable_real"] == real["judge_recognisable_real"]  # the same real images
        assert value["judge_recognisable_ratio"] == value["judge_recognisable"] / value["judge_recognisable_real"]


def test_the_details_record_how_many_samples_the_judge_puts_in_each_class(judged, splits, held_out):
    cache, _ = judged
    images, labels = held_out
    rings = images[labels == 1]
    only_rings = rings.repeat(-(-200 // len(rings)), 1, 1, 1)[:200]  # a generator that drew one class
    counts = metric(cache, confidence=0.5).compute(subject(splits, only_rings)).details["sample_classes"]
    assert list(counts) == ["disk", "ring", "triangle", "square"] and sum(counts.values()) == 200
    assert counts["ring"] >= 150, counts


def test_a_second_metric_reuses_the_cached_judge_without_training(judged, splits, held_out, monkeypatch):
    cache, values = judged
    [path] = cache.glob("judge-*.safetensors")
    written = path.stat().st_mtime_ns
    monkeypatch.setattr("bifamily_metrics.judge.train_judge", lambda *a, **k: pytest.fail("trained again"))
    assert metric(cache, confidence=0.5).compute(subject(splits, held_out[0])).values == values["real"]
    assert path.stat().st_mtime_ns == written
    metadata = read_snapshot(path)[1]
    assert metadata["judge_format"] == "bifamily.judge/2" and len(metadata["fingerprint"]) == 64
    assert float(metadata["heldout_accuracy"]) == values["real"]["judge_accuracy"]


def test_two_judges_from_the_same_data_and_seed_are_identical(splits, held_out):
    images, labels = held_out
    architecture = JudgeArchitecture(channels=1, resolution=16, num_classes=4, width=4, feature_dim=16)
    training = JudgeTraining(steps=20, batch_size=32, lr=3e-3, seed=5)
    first, second = (train_judge(images, labels, architecture, training) for _ in range(2))
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    other = train_judge(images, labels, architecture, JudgeTraining(steps=20, batch_size=32, lr=3e-3, seed=6))
    assert not torch.equal(other.head.weight, first.head.weight)


def test_the_same_settings_give_the_same_numbers_in_two_caches(splits, held_out, tmp_path):
    tiny = dict(steps=20, width=4, feature_dim=16)
    a = metric(tmp_path / "a", **tiny).compute(subject(splits, held_out[0])).values
    b = metric(tmp_path / "b", **tiny).compute(subject(splits, held_out[0])).values
    assert a == b


@pytest.mark.parametrize("damage", ["flipped bytes", "another fingerprint"])
def test_a_damaged_or_mismatched_cached_judge_is_trained_again_with_a_warning(damage, splits, held_out, tmp_path, monkeypatch):
    tiny = dict(steps=20, width=4, feature_dim=16)
    expected = metric(tmp_path, **tiny).compute(subject(splits, held_out[0])).values
    [path] = tmp_path.glob("judge-*.safetensors")
    if damage == "flipped bytes":
        data = bytearray(path.read_bytes())
        data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])
        path.write_bytes(bytes(data))
    else:
        architecture = JudgeArchitecture(channels=1, resolution=16, num_classes=4, width=4, feature_dim=16)
        save_judge(path, new_judge(architecture, 0), "0" * 64, {}, [], 0.0, 0)
    trainings = []
    monkeypatch.setattr("bifamily_metrics.judge.train_judge", lambda *a, **k: trainings.append(1) or train_judge(*a, **k))
    with pytest.warns(UserWarning, match=f"cached sample judge not used, training it again: {re.escape(str(path))}") as warned:
        values = metric(tmp_path, **tiny).compute(subject(splits, held_out[0])).values
    assert len([w for w in warned if "cached sample judge" in str(w.message)]) == 1
    assert len(trainings) == 1 and values == expected
    assert read_snapshot(path)[1]["fingerprint"] != "0" * 64  # the rebuilt judge replaced the file


def test_a_data_set_without_labels_is_refused_naming_the_metric(splits, tmp_path):
    class Unlabelled(torch.utils.data.Dataset):
        num_classes = 0

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(1, 16, 16), -1

    judge = metric(tmp_path)
    with pytest.raises(DataError, match="metric 'judge' needs class labels.*Unlabelled"):
        check_labels({"judge": judge}, Unlabelled(), Unlabelled())
    with pytest.raises(DataError, match="metric 'judge' needs class labels"):
        judge.compute(subject((Unlabelled(), Unlabelled()), torch.zeros(4, 1, 16, 16)))
    assert not list(tmp_path.iterdir())


def test_the_report_refuses_an_unknown_extra_metric_and_prints_the_judge_beside_real_images(tmp_path):
    with pytest.raises(RecipeError, match=r"\$\.eval\.report_extra: unknown metric 'nope'"):
        load(QUICKSTART, load_plugins(), ["eval.report_extra=judge,nope"])
    values = {"judge_recognisable": 0.25, "judge_recognisable_real": 0.98, "judge_coverage": 0.5,
              "judge_coverage_real": 1.0, "judge_accuracy": 0.97, "judge_fd": 3.0}
    assert metric(tmp_path).report_line(values, None) == (
        "sample judge (97.0% accurate on held-out images): 25.0% of generated samples recognisable vs 98.0% of "
        "held-out real images; class coverage 0.50 vs 1.00; judge FD 3.00"
    )
