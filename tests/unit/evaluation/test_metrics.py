"""Metric plugins: registration, recipe settings, records with their settings, exact values where the
maths fixes them, and the best snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch
from torch import nn

from bifamily.checkpoint import read_snapshot
from bifamily.config import option
from bifamily.context import BuildContext
from bifamily.errors import DataError, RecipeError
from bifamily.evaluation.best import BestSnapshot
from bifamily.evaluation.metrics import Record, best_direction, build_metrics, data_key, evaluate, format_table
from bifamily.evaluation.plots import metric_labels
from bifamily.evaluation.runner import Report
from bifamily.hookspecs import hookimpl
from bifamily.interfaces import LatentPrior, Posterior
from bifamily.metric_interfaces import MetricResult, Subject
from bifamily.plugins import load_plugins
from bifamily.recipe import load

QUICKSTART = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.toml"
CTX = BuildContext(resolution=4, channels=1, latent_dim=16)


@attrs.frozen
class ConstantConfig:
    """Reports `value` (a third-party metric for these tests)."""

    value: float = option(0.5, help="The value reported.")

    def build(self, ctx):
        return ConstantMetric(self.value)


@attrs.frozen
class ConstantMetric:
    value: float
    directions = {"constant": "min"}
    needs_labels = False

    def compute(self, subject):
        return MetricResult({"constant": self.value}, {"value": self.value})


class ThirdParty:
    __name__ = "thirdparty_constant"

    @staticmethod
    @hookimpl
    def bifamily_register_metrics(register):
        register("constant", ConstantConfig)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(extra=[ThirdParty])


def recipe(plugins, *overrides):
    return load(QUICKSTART, plugins, list(overrides))


class TwoClasses:
    """Class 0 lights the top half of a 4x4 image, class 1 the bottom half; a little noise."""

    num_classes = 2

    def __init__(self, n: int, seed: int):
        noise = 0.05 * torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        self.labels = torch.arange(n) % 2
        base = -torch.ones(n, 1, 4, 4)
        base[self.labels == 0, :, :2] = 1.0
        base[self.labels == 1, :, 2:] = 1.0
        self.images = (base + noise).clamp(-1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class Unlabelled(TwoClasses):
    num_classes = 0


class PixelEncoder(nn.Module):
    """Features and posterior mean are the pixels: G(E(x)) = x with the generator below."""

    def forward(self, x):
        return Posterior(x.flatten(1))

    def features(self, x):
        return x.flatten(1)


class Replay(nn.Module):
    """A generator that ignores z and replays the images of a data set in order."""

    def __init__(self, data=None):
        super().__init__()
        self.data, self.offset = data, 0

    def forward(self, z):
        if self.data is None:
            return z.view(-1, 1, 4, 4)
        out = self.data.images[self.offset : self.offset + z.shape[0]]
        self.offset += z.shape[0]
        return out


class ZeroPrior(LatentPrior):
    dim = 16

    def sample(self, n, *, generator=None, device="cpu"):
        return torch.zeros(n, self.dim, device=device)


def subject(train, test, generator=None):
    return Subject(Replay(generator), PixelEncoder(), ZeroPrior(), CTX, train, test, {"kind": "two-classes"}, 16, 0)


def test_builtin_metrics_and_feature_networks_are_registered(plugins):
    assert {"probe", "knn", "fid", "recon", "judge", "constant"} <= set(plugins.registry.names("metric"))
    assert {"inception", "random_conv"} <= set(plugins.registry.names("feature_network"))
    assert plugins.registry.get("metric", "probe").plugin == "metrics"


def test_metric_settings_come_from_metrics_sections_and_named_metrics_get_defaults(plugins):
    r = recipe(plugins, "eval.metrics=knn,constant", "metrics.knn.k=5", 'metrics.constant={value = 0.25}')
    assert r.metrics["knn"].k == 5 and r.metrics["constant"].value == 0.25
    assert r.metrics["probe"].features == "pooled"  # the report's metric, with its defaults
    assert r.to_dict()["metrics"]["knn"]["k"] == 5


def test_bad_metric_settings_name_their_keys(plugins):
    with pytest.raises(RecipeError) as raised:
        recipe(plugins, "eval.metrics=probe,nope", "metrics.knn.k=0", "metrics.other.x=1", "metrics.probe.features=pixels")
    problems = "\n".join(raised.value.problems)
    assert "$.eval.metrics: unknown metric 'nope' (installed: constant, fid, judge, knn, probe, recon)" in problems
    assert "$.metrics.knn.k: must be > 0, got 0" in problems
    assert "$.metrics.other: unknown metric 'other'" in problems
    assert "$.metrics.probe.features: must be one of 'pooled', 'posterior_mean'" in problems


def test_a_third_party_metric_is_recorded_with_its_settings(plugins):
    r = recipe(plugins, "eval.metrics=constant", "metrics.constant.value=0.25")
    metrics = build_metrics(r, plugins, r.eval.metric_names, CTX)
    [record] = evaluate(metrics, subject(TwoClasses(8, 0), TwoClasses(8, 1)), step=7)
    assert record.to_json() == {"step": 7, "metric": "constant", "constant": 0.25, "settings": {"value": 0.25}}
    assert format_table([record]).splitlines()[2].split() == ["7", "constant", "constant", "0.2500"]
    assert best_direction("constant", metrics) == "min"
    with pytest.raises(RecipeError, match=r"\$.eval.best: 'fid' is not a value of the metrics .* constant"):
        best_direction("fid", metrics)


def test_the_report_record_pairs_compared_values_with_their_init_twins_and_prints_plain_values_by_default():
    trained = {"constant": Record(9, "constant", MetricResult({"constant": 0.25}, {"value": 0.25})),
               "extra": Record(9, "extra", MetricResult({"extra_value": 2.0}, {"n": 1}))}
    initial = {"constant": Record(9, "constant", MetricResult({"constant": 0.5}, {"value": 0.5}))}
    report = Report(9, trained, initial, {"constant": ConstantMetric(0.25), "extra": ConstantMetric(2.0)})
    assert report.record() == {
        "step": 9, "metric": "report", "constant": 0.25, "constant_init": 0.5, "extra_value": 2.0,
        "settings": {"constant": {"value": 0.25}, "extra": {"n": 1}},
    }
    assert report.lines() == ["constant: constant 0.25", "extra: extra_value 2"]


def test_details_go_beside_the_values_in_records_and_the_report_and_do_not_split_plotted_series():
    def judged(step: int, histogram: dict[str, int]) -> Record:
        return Record(step, "judge", MetricResult({"judge_coverage": 0.5}, {"samples": 8}, details={"classes": histogram}))

    early, late = judged(1, {"disk": 8}), judged(2, {"disk": 4, "ring": 4})
    assert late.to_json() == {
        "step": 2, "metric": "judge", "judge_coverage": 0.5, "settings": {"samples": 8},
        "details": {"classes": {"disk": 4, "ring": 4}},
    }
    report = Report(2, {"judge": late}, {}, {"judge": ConstantMetric(0.5)}).record()
    assert report["details"] == {"judge": {"classes": {"disk": 4, "ring": 4}}}
    assert report["settings"] == {"judge": {"samples": 8}}
    same_settings = [early.to_json(), late.to_json()]
    assert [metric_labels(same_settings)(record) for record in same_settings] == ["judge", "judge"]
    other_settings = [*same_settings, {**early.to_json(), "settings": {"samples": 16}}]
    assert [metric_labels(other_settings)(record) for record in other_settings] == ["judge #1", "judge #1", "judge #2"]


def test_probe_and_knn_separate_separable_classes_and_record_their_protocol(plugins):
    r = recipe(plugins, "eval.train_samples=40", "eval.test_samples=20", "metrics.probe.steps=50", "metrics.knn.k=3")
    metrics = build_metrics(r, plugins, ["probe", "knn"], CTX)
    probe, knn = evaluate(metrics, subject(TwoClasses(60, 0), TwoClasses(30, 1)), step=1)
    assert probe.result.values["probe_top1"] == 1.0 and probe.result.values["probe_top5"] == 1.0
    assert knn.result.values == {"knn_top1": 1.0, "knn_top5": 1.0}
    assert probe.result.settings["train_samples"] == 40 and probe.result.settings["test_samples"] == 20
    assert probe.result.settings["features"] == "pooled" and probe.result.settings["steps"] == 50
    assert knn.result.settings["k"] == 3 and knn.result.settings["similarity"] == "cosine"
    json.dumps(probe.to_json())  # a JSON line as it is


class MeanOnlyEncoder(PixelEncoder):
    """The posterior mean is the pixels; the pooled features carry nothing."""

    def features(self, x):
        return torch.zeros(x.shape[0], 3)


def test_the_recipe_chooses_posterior_mean_features_and_the_swept_learning_rates(plugins):
    def probe(*overrides):
        r = recipe(plugins, "eval.train_samples=40", "eval.test_samples=20", "metrics.probe.steps=50", *overrides)
        metrics = build_metrics(r, plugins, ["probe"], CTX)
        train, test = TwoClasses(60, 0), TwoClasses(30, 1)
        probed = Subject(Replay(), MeanOnlyEncoder(), ZeroPrior(), CTX, train, test, {"kind": "two"}, 16, 0)
        return evaluate(metrics, probed, step=1)[0].result

    assert probe().values["probe_top1"] == 0.5  # constant features: every image gets the same class
    mean = probe("metrics.probe.features=posterior_mean", "metrics.probe.lrs=0.001, 0.05, 0.001")
    assert mean.values["probe_top1"] == 1.0 and mean.settings["features"] == "posterior_mean"
    assert mean.settings["lrs"] == [1e-3, 0.05]  # in order, duplicates dropped


def test_the_reference_cache_key_names_the_data_folder_absolutely(plugins, tmp_path, monkeypatch):
    mnist = "data={kind = \"mnist\", root = \"digits\"}"
    keys = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        keys.append(data_key(recipe(plugins, mnist)))
    assert keys[0]["root"] == str(tmp_path / "a" / "digits") and keys[1]["root"] == str(tmp_path / "b" / "digits")
    assert data_key(recipe(plugins)) == recipe(plugins).to_dict()["data"]  # no root: as resolved


def test_probe_and_knn_refuse_a_data_set_without_labels(plugins):
    metrics = build_metrics(recipe(plugins), plugins, ["knn"], CTX)
    with pytest.raises(DataError, match="metric 'knn' needs class labels.*Unlabelled"):
        evaluate(metrics, subject(Unlabelled(8, 0), Unlabelled(8, 1)), step=1)


def test_fid_of_samples_equal_to_the_reference_is_zero_and_reference_statistics_are_cached(plugins, tmp_path):
    r = recipe(
        plugins, "metrics.fid.feature_network=random_conv", "metrics.fid.samples=40", "metrics.fid.reference_samples=40",
        "metrics.fid.kid_subset_size=20", "metrics.fid.kid_subsets=5", f"metrics.fid.cache_dir={json.dumps(str(tmp_path))}",
    )
    train = TwoClasses(50, 0)
    [record] = evaluate(build_metrics(r, plugins, ["fid"], CTX), subject(train, TwoClasses(10, 1), generator=train), 3)
    assert abs(record.result.values["fid"]) < 1e-6
    assert abs(record.result.values["kid"]) < 0.05 and "is" not in record.result.values  # no logits
    settings = record.result.settings
    assert settings["samples"] == 40 and settings["reference_split"] == "train" and settings["reference_samples"] == 40
    assert settings["feature_network"].startswith("random-conv(channels=1") and "bilinear to 4x4" in settings["resizer"]
    assert len(list((tmp_path / "reference-stats").glob("reference-*.npz"))) == 1


def test_reconstruction_metric_of_a_perfect_autoencoder(plugins):
    r = recipe(plugins, "metrics.recon.images=6", "metrics.recon.iterations=2", "metrics.recon.strip_images=3")
    test = TwoClasses(10, 1)
    [record] = evaluate(build_metrics(r, plugins, ["recon"], CTX), subject(TwoClasses(4, 0), test), 1)
    values = record.result.values
    assert values["recon_error"] == 0.0 and values["recon_ratio"] == 0.0 and values["recon_error_random"] > 0.5
    assert record.result.images["pairs"].images.shape == (12, 1, 4, 4) and record.result.images["pairs"].nrow == 12
    assert record.result.images["iterated"].images.shape == (9, 1, 4, 4) and record.result.images["iterated"].nrow == 3


def test_missing_inception_weights_are_a_recipe_error_naming_the_file_and_key(plugins, monkeypatch):
    monkeypatch.delenv("BIFAMILY_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(RecipeError) as raised:
        build_metrics(recipe(plugins, "metrics.fid.feature_network=inception"), plugins, ["fid"], CTX)
    [line] = raised.value.problems
    assert line.startswith("$.feature_networks.inception.weights:") and "inception-2015-12-05.pt" in line


def test_the_best_snapshot_keeps_the_best_value_and_forgets_an_abandoned_timeline(tmp_path):
    modules = {"net": nn.Linear(2, 2)}
    best = BestSnapshot(tmp_path, "probe_top1", "max")
    offers = [(1, 0.5), (2, 0.9), (3, 0.7), (4, 0.9), (5, float("nan"))]
    saved = []
    for step, value in offers:
        with torch.no_grad():
            modules["net"].weight.fill_(step)
        saved.append(best.offer(value, step, modules, {"recipe": "{}"}))
    assert saved == [True, True, False, False, False]
    tensors, metadata = read_snapshot(best.path)
    assert metadata["step"] == "2" and float(metadata["best_value"]) == 0.9 and metadata["best_value_name"] == "probe_top1"
    assert torch.all(tensors["net.weight"] == 2)
    assert BestSnapshot(tmp_path, "probe_top1", "max", resumed_step=3).value == 0.9  # resumed after it: kept
    BestSnapshot(tmp_path, "probe_top1", "max", resumed_step=1)  # resumed before it: another timeline
    assert not best.path.exists()
    lower = BestSnapshot(tmp_path, "fid", "min")
    assert [lower.offer(v, s, modules, {}) for s, v in [(1, 3.0), (2, 2.0), (3, 2.5)]] == [True, True, False]


def test_a_rewind_puts_back_the_best_of_the_latest_checkpoint(tmp_path):
    """Checkpoint at step 2; bests at 1 and 2 (committed), then 3 and 4 (after it): a rollback to the
    checkpoint restores step 2's best, with its value, whatever came after."""
    modules = {"net": nn.Linear(2, 2)}
    best = BestSnapshot(tmp_path, "probe_top1", "max")
    for step, value, checkpointed in [(1, 0.5, 0), (2, 0.6, 0), (3, 0.7, 2), (4, 0.8, 2)]:
        with torch.no_grad():
            modules["net"].weight.fill_(step)
        assert best.offer(value, step, modules, {}, checkpointed_step=checkpointed)
    best.rewind(2)
    tensors, metadata = read_snapshot(best.path)
    assert metadata["step"] == "2" and best.value == 0.6 and torch.all(tensors["net.weight"] == 2)
    assert not best.committed_path.exists()
    assert not best.offer(0.55, 3, modules, {}, checkpointed_step=2)  # the restored value is the bar
    best.rewind(0)  # before every best: nothing is left
    assert best.value is None and not best.path.exists()


def test_latest_step_names_the_step_of_the_latest_checkpoint(tmp_path):
    from bifamily.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path / "checkpoints")
    assert manager.latest_step() is None
    (tmp_path / "checkpoints" / "step-00000120").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000120" / "snapshot.safetensors").write_bytes(b"")  # an empty folder is none
    (tmp_path / "checkpoints" / "latest").write_text("step-00000120")
    assert manager.latest_step() == 120
