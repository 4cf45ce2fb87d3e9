"""``bench/ablations_small.py``: each row's recipe differs from Base only where the paper's row does; the
table's means, standard errors and direction margins are exact; and (slow) two seeds of every row end
to end at a few steps."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench import ablations_small
from bifamily.recipe import load_raw

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "ablations_small"
CHANGES = {  # row -> the (section, key) it changes with respect to base.toml, beyond [run].name
    "deterministic_e": {("posterior", "kind")},
    "uniform_pz": {("prior", "kind"), ("posterior", "kind")},
    "x_unary_only": {("loss", "z_unary")},
    "z_unary_only": {("loss", "x_unary")},
    "no_unaries": {("loss", "x_unary"), ("loss", "z_unary")},
    "e_up_lr": {("optim", "e_lr")},
    "no_e_gan": {("loss", "z_unary"), ("loss", "joint")},
}


def resolved(path: Path) -> dict:
    """The recipe with its ``extends`` chain merged, as the project reads it."""
    return load_raw(path)


def flat(recipe: dict) -> dict:
    return {(section, key): value for section, table in recipe.items() if isinstance(table, dict) for key, value in table.items()}


@pytest.mark.parametrize("row", sorted(CHANGES))
def test_each_row_differs_from_base_only_where_the_paper_row_does(row):
    base, variant = flat(resolved(RECIPES / "base.toml")), flat(resolved(RECIPES / f"{row}.toml"))
    changed = {key for key in base.keys() | variant.keys() if base.get(key) != variant.get(key)} - {("run", "name")}
    assert changed == CHANGES[row]


def test_base_is_the_papers_objective_at_the_quickstarts_scale():
    base, quickstart = resolved(RECIPES / "base.toml"), tomllib.loads((REPO / "recipes" / "quickstart.toml").read_text())
    for section in ("generator", "encoder", "discriminator", "prior"):
        assert base[section] == quickstart[section], section
    # the same shapes at the same resolution, in the data set's default colours and sizes
    quickstart_look = {"colours", "min_radius", "max_radius"}
    assert base["data"] == {k: v for k, v in quickstart["data"].items() if k not in quickstart_look}
    assert base["train"]["batch_size"] == quickstart["train"]["batch_size"] and base["run"]["steps"] == 1200
    assert base["train"]["d_steps"] == 2 and base["train"].get("updates", "alternating") == "alternating"
    assert "e_lr" not in base["optim"] and base["loss"].get("cycle", 0) == 0
    assert base["posterior"]["kind"] == "gaussian" and base["loss"]["x_unary"] == base["loss"]["z_unary"] == 1.0


def test_every_row_of_the_bench_has_a_recipe():
    assert sorted(ablations_small.ROWS) == sorted(path.stem for path in RECIPES.glob("*.toml"))
    assert all(d.better in ablations_small.ROWS and d.worse in ablations_small.ROWS for d in ablations_small.DIRECTIONS)


def test_summary_is_mean_sd_and_standard_error():
    runs = [{"probe": 40.0, "knn": 30.0, "fd": 10.0}, {"probe": 44.0, "knn": 30.0, "fd": 14.0}]
    stats = ablations_small.row_summary("base", runs)
    assert stats["probe"] == {"mean": 42.0, "sd": pytest.approx(8**0.5), "se": pytest.approx(2.0), "n": 2}
    assert stats["knn"]["se"] == 0.0 and "recognisable" not in stats
    assert set(ablations_small.row_summary("no_e_gan", runs)) == {"fd"}  # its encoder is never trained


def stats(mean: float, se: float) -> dict:
    return {"mean": mean, "sd": se * 2, "se": se, "n": 4}


def test_margins_are_differences_in_standard_errors_in_the_papers_direction():
    probe = ablations_small.Direction("stochastic beats deterministic", "probe", "base", "deterministic_e")
    table = {"base": {"probe": stats(45.0, 1.5)}, "deterministic_e": {"probe": stats(40.0, 2.0)}}
    assert ablations_small.margin(probe, table) == pytest.approx(2.0)  # 5 / hypot(1.5, 2)
    assert ablations_small.verdict(probe, 2.0) == "holds"
    assert ablations_small.verdict(probe, 0.5) == "same sign, within 2 SE"
    assert ablations_small.verdict(probe, -1.0) == "does not hold"
    assert ablations_small.verdict(probe, -2.5) == "reversed (by 2 SE or more)"
    fd = ablations_small.Direction("x unary: better samples", "fd", "x_unary_only", "z_unary_only")  # lower is better
    table = {"x_unary_only": {"fd": stats(10.0, 0.3)}, "z_unary_only": {"fd": stats(12.0, 0.4)}}
    assert ablations_small.margin(fd, table) == pytest.approx(4.0)
    no_better = ablations_small.Direction("GAN no better", "fd", "base", "no_e_gan", at_least_as_good=True)
    table = {"base": {"fd": stats(12.0, 0.3)}, "no_e_gan": {"fd": stats(11.0, 0.4)}}  # the GAN better by 2 SE
    assert ablations_small.margin(no_better, table) == pytest.approx(-2.0)
    assert ablations_small.verdict(no_better, -2.0) == "does not hold" and ablations_small.verdict(no_better, -1.9) == "holds"
    assert ablations_small.margin(no_better, {"base": {}}) is None and ablations_small.verdict(no_better, None) == "not measured"
    assert math.isinf(ablations_small.margin(probe, {"base": {"probe": stats(2, 0)}, "deterministic_e": {"probe": stats(1, 0)}}))


def test_the_table_shows_mean_and_standard_error_and_a_dash_where_a_row_has_no_figure():
    table = ablations_small.format_table({
        "base": {key: stats(1.0, 0.25) for key in ("probe", "knn", "recognisable", "coverage", "fd")},
        "no_e_gan": {"fd": stats(3.0, 0.5)},
    })
    lines = table.splitlines()
    assert lines[2] == "| Base | 1.0 ± 0.2 | 1.0 ± 0.2 | 1.0 ± 0.2 | 1.000 ± 0.250 | 1.00 ± 0.25 |"
    assert lines[3] == "| No E (GAN) | — | — | — | — | 3.00 ± 0.50 |"


TINY = [
    "train.batch_size=8", "generator.ch=8", "encoder.ch=8", "discriminator.ch=8", "discriminator.z_width=16",
    "discriminator.joint_width=16", "run.log_every=1", "run.sample_every=3", "run.checkpoint_every=3",
    "eval.train_samples=40", "eval.test_samples=20", "metrics.probe.steps=5", "metrics.judge.steps=5",
    "metrics.judge.train_images=64", "metrics.judge.real_images=32",
]


@pytest.mark.slow
def test_two_seeds_of_every_row_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("BIFAMILY_CACHE_DIR", str(tmp_path / "cache"))
    command = [
        sys.executable, "-m", "bench.ablations_small", "--seeds", "0,1", "--steps", "3", "--runs", str(tmp_path / "runs"),
        "--output", str(tmp_path / "table.json"), *[f"--set={item}" for item in TINY],
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "table.json").read_text())
    assert list(table["table"]) == ["Base", "Deterministic E", "Uniform Pz", "x Unary Only", "z Unary Only", "No Unaries", "E up-LR", "No E (GAN)"]
    assert all(stats["n"] == 2 for row in table["table"].values() for stats in row.values())
    assert "probe" not in table["table"]["No E (GAN)"] and "fd" in table["table"]["No E (GAN)"]
    assert len(table["directions"]) == 8 and all(finding["margin_se"] is not None for finding in table["directions"])
    assert table["core_seconds_trained"] > 0
    assert "| the paper's direction |" in result.stdout
