"""bench/param_counts.py, which produces docs/models.md's table: it validates image-folder recipes on
the built-in data at the same resolutions, and its per-part counts add up to validate's."""

from __future__ import annotations

from pathlib import Path

from bench import param_counts
from bifamily.plugins import default_plugins
from bifamily.recipe import load

REPO = Path(__file__).resolve().parents[2]


def test_image_folder_recipes_are_validated_on_procedural_data_at_their_resolutions():
    plugins = default_plugins()
    highres = REPO / "recipes" / "bigbigan_highres.toml"
    overrides = param_counts.procedural_override(load(highres, plugins))
    assert overrides == [
        'data={kind = "procedural", resolution = 128, channels = 3, encoder_resolution = 256}'
    ]
    data = load(highres, plugins, overrides).components["data"]
    assert (data.resolution, data.encoder_resolution, data.channels) == (128, 256, 3)
    small = load(REPO / "recipes" / "bigbigan_small.toml", plugins)
    assert param_counts.procedural_override(small) == []


def test_parts_add_up_to_validates_counts_for_the_cpu_recipe():
    counts = param_counts.recipe_counts(REPO / "recipes" / "bigbigan_small.toml")
    validate, parts = counts["validate"], counts["children"]
    # the figures docs/models.md gives for this recipe
    assert (validate["generator"], validate["encoder"], validate["discriminator"]) == (
        295_332,
        1_971_856,
        1_389_124,
    )
    for module, children in parts.items():
        assert sum(children.values()) == validate[module], module
    assert set(parts["discriminator"]) == {
        "image_path", "latent_path", "joint_path", "image_head", "latent_head", "joint_head"
    }
    table = param_counts.markdown_table({"recipes/bigbigan_small.toml": counts})
    assert "| `bigbigan_small.toml` | 295,332 | 1.97M (1.48M + 461,824 + 32,896) |" in table
