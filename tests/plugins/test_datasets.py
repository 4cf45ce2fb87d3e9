"""The built-in data sets: procedural shapes, MNIST idx files and image folders."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

import bifamily_datasets
from bifamily.config import structure
from bifamily.context import BuildContext
from bifamily.errors import DataError, RecipeError
from bifamily.interfaces import LabelledDataset
from bifamily_datasets import ImageFolderConfig, MnistConfig, ProceduralConfig
from bifamily_datasets.counter_rng import uniforms
from bifamily_datasets.crops import UNIFORMS_PER_CROP, distorted, random_resized
from bifamily_datasets.shapes import SHAPES
from bifamily_datasets.torchvision_sets import TorchvisionConfig

from tests.helpers.idx_files import write_idx

CONFIGS = [ProceduralConfig, MnistConfig, ImageFolderConfig]
MNIST_DIR = Path("/work/shared/data/mnist")


def ctx(resolution: int = 32, channels: int = 3, encoder_resolution: int | None = None) -> BuildContext:
    return BuildContext(
        resolution=resolution, channels=channels, latent_dim=4, encoder_resolution=encoder_resolution
    )


def paths(dataset) -> list[Path]:
    return [dataset.path(i) for i in range(len(dataset))]


def items(dataset, indices) -> tuple[torch.Tensor, list[int]]:
    pairs = dataset.__getitems__(list(indices))
    return torch.stack([image for image, _ in pairs]), [label for _, label in pairs]


# --- registration and the shared contract ---------------------------------------------------------


def test_registers_the_four_data_kinds() -> None:
    registered: dict[str, type] = {}
    bifamily_datasets.bifamily_register_datasets(register=registered.__setitem__)
    assert registered == {
        "procedural": ProceduralConfig,
        "mnist": MnistConfig,
        "image_folder": ImageFolderConfig,
        "torchvision": TorchvisionConfig,
    }


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_every_field_is_documented_and_the_geometry_fields_exist(config_cls: type) -> None:
    fields = attrs.fields_dict(config_cls)
    assert all(field.metadata.get("help") for field in fields.values())
    assert fields["resolution"].default == 32
    assert fields["encoder_resolution"].default is None
    assert fields["channels"].default == (1 if config_cls is MnistConfig else 3)


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_channels_must_be_one_or_three(config_cls: type) -> None:
    with pytest.raises(ValueError, match="must be one of 1, 3"):
        config_cls(**({} if config_cls is ProceduralConfig else {"root": "x"}), channels=2)


def test_a_context_with_other_channels_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match=r"\$\.data\.channels"):
        ProceduralConfig().build(ctx(channels=4), "train")


# --- procedural -----------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_procedural_images_have_the_context_shape_and_range(resolution: int, channels: int) -> None:
    dataset = ProceduralConfig(channels=channels).build(ctx(resolution, channels), "train")
    assert isinstance(dataset, LabelledDataset)
    images, labels = items(dataset, range(24))
    assert images.shape == (24, channels, resolution, resolution)
    assert images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert labels == [i % 10 for i in range(24)]


def test_procedural_images_come_at_the_larger_of_the_two_model_resolutions() -> None:
    dataset = ProceduralConfig().build(ctx(16, encoder_resolution=32), "train")
    assert dataset[0][0].shape == (3, 32, 32)


def test_procedural_item_depends_only_on_seed_split_and_index() -> None:
    first = ProceduralConfig(seed=3).build(ctx(), "train")
    again = ProceduralConfig(seed=3).build(ctx(), "train")
    batch, _ = items(first, [9, 2, 40, 7])
    alone = torch.stack([again[i][0] for i in [9, 2, 40, 7]])
    assert torch.equal(batch, alone)
    other_seed, _ = items(ProceduralConfig(seed=4).build(ctx(), "train"), [9, 2, 40, 7])
    assert not torch.equal(batch, other_seed)


def test_procedural_train_and_test_splits_share_no_image() -> None:
    config = ProceduralConfig(train_size=200, test_size=200)
    train, _ = items(config.build(ctx(16), "train"), range(200))
    test, _ = items(config.build(ctx(16), "test"), range(200))
    assert torch.cdist(train.flatten(1), test.flatten(1)).min() > 1.0
    assert (len(config.build(ctx(), "train")), len(config.build(ctx(), "test"))) == (200, 200)


@pytest.mark.parametrize("classes", [2, 7, len(SHAPES)])
def test_procedural_classes_are_balanced_and_named_after_shapes(classes: int) -> None:
    dataset = ProceduralConfig(classes=classes).build(ctx(16), "train")
    _, labels = items(dataset, range(classes * 5))
    assert torch.bincount(torch.tensor(labels)).tolist() == [5] * classes
    assert dataset.num_classes == classes
    assert dataset.class_names == list(SHAPES)[:classes]


@pytest.mark.parametrize("classes", [1, len(SHAPES) + 1])
def test_procedural_class_count_is_bounded_by_the_shapes(classes: int) -> None:
    with pytest.raises(ValueError, match="must be in"):
        ProceduralConfig(classes=classes)


def test_procedural_index_out_of_range_raises_index_error() -> None:
    dataset = ProceduralConfig(test_size=10).build(ctx(16), "test")
    with pytest.raises(IndexError):
        dataset[10]
    with pytest.raises(IndexError):
        dataset[-1]


@pytest.mark.parametrize("radii", [None, (0.34, 0.47), (0.3, 0.3)])
def test_procedural_draws_each_label_with_its_shape_area_and_keeps_contrast(radii) -> None:
    """Per class, the covered fraction of the image must match the shape's own area times the mean
    squared size: a check that each label is drawn with its shape, at the configured sizes."""
    per_class = 80
    classes = len(SHAPES)
    config = ProceduralConfig(classes=classes, channels=1)
    if radii is not None:
        config = attrs.evolve(config, min_radius=radii[0], max_radius=radii[1])
    dataset = config.build(ctx(32, 1), "train")
    images, labels = items(dataset, range(classes * per_class))
    images = images[:, 0]
    background = images[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean(1)
    difference = images - background[:, None, None]
    peak = difference.abs().amax((1, 2))
    assert peak.min() > 0.6  # foreground/background contrast survives (0.7 minus noise)
    covered = (difference.abs() > peak[:, None, None] / 2).float().mean((1, 2))
    low, high = config.min_radius, config.max_radius
    mean_squared_size = (high**3 - low**3) / (3 * (high - low)) if high > low else low**2
    axis = (torch.arange(400) + 0.5) / 200 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    labels = torch.tensor(labels)
    for label, sdf in enumerate(SHAPES.values()):
        shape_area = (sdf(x, y) < 0).float().mean() * 4  # in units of the shape's radius squared
        expected = float(shape_area) * mean_squared_size
        assert float(covered[labels == label].mean()) == pytest.approx(expected, rel=0.15)


def test_procedural_radius_range_must_be_ordered_and_inside_the_image() -> None:
    with pytest.raises(RecipeError, match=r"^\$\.data\.max_radius: must be >= min_radius \(0\.4\), got 0\.3$"):
        structure({"min_radius": 0.4, "max_radius": 0.3}, ProceduralConfig, "$.data")
    with pytest.raises(RecipeError, match=r"^\$\.data\.max_radius: must be in \[0\.05, 0\.5\]"):
        structure({"max_radius": 0.6}, ProceduralConfig, "$.data")


@pytest.mark.parametrize("name", list(SHAPES))
def test_shape_distances_give_antialiased_coverage_close_to_supersampling(name: str) -> None:
    sdf, side, factor = SHAPES[name], 24, 8

    def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        axis = (torch.arange(n) + 0.5) / n * 2.2 - 1.1
        return torch.meshgrid(axis, axis, indexing="ij")

    y, x = grid(side)
    coverage = (0.5 - sdf(x, y) * side / 2.2).clamp(0, 1)
    y, x = grid(side * factor)
    supersampled = (sdf(x, y) < 0).float().reshape(side, factor, side, factor).mean((1, 3))
    assert (coverage - supersampled).abs().mean() < 0.01
    assert (coverage - supersampled).abs().max() < 0.4  # a 1-pixel ramp rounds corners and cusps


def shape_centres(config: ProceduralConfig, count: int) -> torch.Tensor:
    """(count, 2) centres of mass (x, y), in pixels, of disks and rings (two classes), without noise."""
    dataset = config.build(ctx(32), "train")
    index = torch.arange(count)
    u = uniforms(dataset.key, index, 13)
    coverage = dataset._coverage(torch.sort(index % 2).values, u)  # labels sorted, as render passes them
    pixel = torch.arange(32, dtype=torch.float32) + 0.5
    mass = coverage.sum((1, 2))
    return torch.stack([(coverage.sum(1) * pixel).sum(1) / mass, (coverage.sum(2) * pixel).sum(1) / mass], 1)


def test_procedural_placement_zero_centres_every_shape_and_one_keeps_the_default_images() -> None:
    centred = shape_centres(ProceduralConfig(classes=2, placement=0.0), 50)  # symmetric: mass centre = centre
    assert torch.allclose(centred, torch.full_like(centred, 16.0), atol=1e-3)
    default, _ = items(ProceduralConfig().build(ctx(), "train"), range(20))
    full_room, _ = items(ProceduralConfig(placement=1.0).build(ctx(), "train"), range(20))
    assert torch.equal(default, full_room)


def test_procedural_placement_narrows_where_centres_fall() -> None:
    anywhere = shape_centres(ProceduralConfig(classes=2), 400)
    narrow = shape_centres(ProceduralConfig(classes=2, placement=0.3), 400)
    free_room = 32 - 2 * 32 * 0.24  # the smallest radius leaves the most room
    assert (narrow - 16).abs().max() <= 0.3 * free_room / 2 + 1e-3
    assert (anywhere - 16).abs().max() > 0.8 * free_room / 2


@pytest.mark.parametrize("channels", [1, 3])
def test_procedural_light_on_dark_draws_light_shapes_on_dark_backgrounds(channels: int) -> None:
    config = ProceduralConfig(colours="light_on_dark", channels=channels)
    dataset = config.build(ctx(32, channels), "train")
    u = uniforms(dataset.key, torch.arange(200), 13)
    foreground, background = dataset._colours(u)
    assert foreground.shape == background.shape == (200, channels)
    assert foreground.min() >= 0.5 and foreground.max() <= 1 and background.max() <= 0.25
    images, _ = items(dataset, range(40))
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.max() < 2 * 0.25 - 1 + 0.2  # background plus noise, in [-1, 1] units


def test_procedural_light_or_dark_swaps_the_bands_for_about_half_the_items() -> None:
    u = uniforms(0, torch.arange(400), 14)
    light = ProceduralConfig(colours="light_on_dark").build(ctx(32), "train")
    either = ProceduralConfig(colours="light_or_dark").build(ctx(32), "train")
    light_fg, light_bg = light._colours(u)
    fg, bg = either._colours(u)
    dark = u[:, 13] < 0.5
    assert 160 < int(dark.sum()) < 240
    assert torch.equal(fg[~dark], light_fg[~dark]) and torch.equal(bg[~dark], light_bg[~dark])
    assert torch.equal(fg[dark], light_bg[dark]) and torch.equal(bg[dark], light_fg[dark])
    images, _ = items(either, range(40))  # corners show the background: dark or light, never between
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].mean((1, 2))
    assert ((corners < 2 * 0.25 - 1 + 0.1) | (corners > 2 * 0.5 - 1 - 0.1)).all()
    assert (corners < 0).any() and (corners > 0).any()


def test_procedural_colour_scheme_and_placement_are_checked() -> None:
    with pytest.raises(RecipeError, match=r"^\$\.data\.colours: must be one of"):
        structure({"colours": "pastel"}, ProceduralConfig, "$.data")
    with pytest.raises(RecipeError, match=r"^\$\.data\.placement: must be in \[0\.0, 1\.0\]"):
        structure({"placement": 1.5}, ProceduralConfig, "$.data")


def test_procedural_works_with_a_dataloader() -> None:
    dataset = ProceduralConfig().build(ctx(16), "train")
    images, labels = next(iter(DataLoader(dataset, batch_size=8)))
    assert images.shape == (8, 3, 16, 16)
    assert labels.tolist() == list(range(8))
    assert torch.equal(images[3], dataset[3][0])


# --- mnist ----------------------------------------------------------------------------------------


def digits(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every pixel is (offset + index) % 256, labels index % 10."""
    values = (offset + np.arange(count)) % 256
    images = np.broadcast_to(values[:, None, None], (count, 28, 28))
    return images, np.arange(count) % 10


def write_split(root: Path, prefix: str, count: int, offset: int, gz: bool) -> None:
    images, labels = digits(count, offset)
    suffix = ".gz" if gz else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_the_train_and_t10k_files(tmp_path: Path, gz: bool) -> None:
    write_split(tmp_path, "train", 30, offset=0, gz=gz)
    write_split(tmp_path, "t10k", 12, offset=100, gz=gz)
    config = MnistConfig(root=str(tmp_path), resolution=28)
    train, test = config.build(ctx(28, 1), "train"), config.build(ctx(28, 1), "test")
    assert (len(train), len(test)) == (30, 12)
    assert train.num_classes == 10 and train.class_names == [str(d) for d in range(10)]
    image, label = test[5]
    assert image.shape == (1, 28, 28) and label == 5
    assert torch.allclose(image, torch.full_like(image, 105 / 127.5 - 1))


def test_mnist_with_only_t10k_holds_out_its_last_images(tmp_path: Path) -> None:
    write_split(tmp_path, "t10k", 50, offset=0, gz=True)
    config = MnistConfig(root=str(tmp_path), holdout=20)
    train, test = config.build(ctx(28, 1), "train"), config.build(ctx(28, 1), "test")
    assert (len(train), len(test)) == (30, 20)
    assert test[0][1] == 30 % 10
    assert float(test[0][0][0, 0, 0]) == pytest.approx(30 / 127.5 - 1)


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_mnist_resizes_and_replicates_channels(tmp_path: Path, resolution: int) -> None:
    write_split(tmp_path, "t10k", 10, offset=0, gz=False)
    images = np.zeros((10, 28, 28))
    images[:, :, 14:] = 255  # left half black, right half white
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    config = MnistConfig(root=str(tmp_path), resolution=resolution, channels=3, holdout=5)
    batch, labels = items(config.build(ctx(resolution, 3), "test"), range(5))
    assert batch.shape == (5, 3, resolution, resolution)
    assert labels == [5, 6, 7, 8, 9]
    assert batch.min() >= -1 and batch.max() <= 1
    assert torch.equal(batch[:, 0], batch[:, 2])
    assert torch.allclose(batch[..., 0], torch.tensor(-1.0))  # left column black
    assert torch.allclose(batch[..., -1], torch.tensor(1.0))  # right column white


def test_mnist_holdout_must_leave_both_splits_non_empty(tmp_path: Path) -> None:
    write_split(tmp_path, "t10k", 10, offset=0, gz=False)
    with pytest.raises(DataError, match=r"\$\.data\.holdout: 10 must be between 1 and 9"):
        MnistConfig(root=str(tmp_path), holdout=10).build(ctx(28, 1), "train")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda data: b"\x00\x00\x0d\x03" + data[4:], "expected magic 0x00000803"),
        (lambda data: data[:-5], "header says shape"),
        (lambda data: data[:6], "header says shape|expected magic"),
    ],
)
def test_mnist_malformed_idx_names_the_file(tmp_path: Path, corrupt, message: str) -> None:
    write_split(tmp_path, "t10k", 10, offset=0, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError, match=message) as error:
        MnistConfig(root=str(tmp_path), holdout=5).build(ctx(28, 1), "train")
    assert str(error.value).startswith("$.data.root: ") and str(path) in str(error.value)


def test_mnist_broken_gzip_and_mismatched_labels_name_the_file(tmp_path: Path) -> None:
    write_split(tmp_path, "t10k", 10, offset=0, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])
    with pytest.raises(DataError, match=f"cannot read {labels}"):
        MnistConfig(root=str(tmp_path), holdout=5).build(ctx(28, 1), "train")
    write_idx(labels, np.arange(9) % 10)
    with pytest.raises(DataError, match="has 9 labels for the 10 images"):
        MnistConfig(root=str(tmp_path), holdout=5).build(ctx(28, 1), "train")


def test_mnist_missing_root_files_or_test_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^\$\.data\.root: folder not found: .*nowhere"):
        MnistConfig(root=str(tmp_path / "nowhere")).build(ctx(28, 1), "train")
    with pytest.raises(DataError, match="no MNIST idx files in"):
        MnistConfig(root=str(tmp_path)).build(ctx(28, 1), "train")
    write_split(tmp_path, "train", 10, offset=0, gz=False)
    with pytest.raises(DataError, match=re.escape("t10k-images-idx3-ubyte[.gz] not found in")):
        MnistConfig(root=str(tmp_path)).build(ctx(28, 1), "test")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST t10k files not present in {MNIST_DIR}")
def test_real_mnist_t10k_splits_into_8000_and_2000() -> None:
    config = MnistConfig(root=str(MNIST_DIR))
    train, test = config.build(ctx(32, 1), "train"), config.build(ctx(32, 1), "test")
    assert (len(train), len(test)) == (8000, 2000)
    assert torch.bincount(test.labels, minlength=10).min() > 150
    batch, _ = items(train, range(256))
    assert -0.85 < float(batch.mean()) < -0.6  # MNIST is mostly black background


# --- image folder ---------------------------------------------------------------------------------


def save_rgb(path: Path, width: int, height: int, colour: tuple[int, int, int], **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path, **kwargs)


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """root/<class>/ with RGB, RGBA, 8- and 16-bit grayscale, palette images, a corrupt .jpg and a
    text file."""
    root = tmp_path / "images"
    for i in range(4):
        save_rgb(root / "apple" / f"a{i}.png", 30 + 7 * i, 24, (200, 30, 30))
        save_rgb(root / "pear" / f"p{i}.jpg", 24, 40, (30, 200, 30), quality=95)
    Image.new("RGBA", (20, 20), (0, 0, 255, 0)).save(root / "apple" / "transparent.png")
    Image.new("L", (20, 26), 100).save(root / "pear" / "gray.png")
    Image.fromarray(np.full((20, 20), 100 * 257, dtype=np.uint16)).save(root / "pear" / "gray16.png")
    Image.new("P", (20, 20), 0).save(root / "pear" / "palette.gif")
    (root / "pear" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "pear" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_labels_by_class_folder_and_splits_by_hashed_holdout(class_folder: Path) -> None:
    config = ImageFolderConfig(root=str(class_folder), holdout_fraction=0.4)
    train, test = config.build(ctx(), "train"), config.build(ctx(), "test")
    assert train.class_names == test.class_names == ["apple", "pear"]
    assert train.num_classes == 2
    assert not set(paths(train)) & set(paths(test))
    assert len(train) + len(test) == 13  # every image file, the text file excluded
    assert train.labels.tolist() == [["apple", "pear"].index(path.parent.name) for path in paths(train)]
    save_rgb(class_folder / "apple" / "new.png", 20, 20, (0, 0, 0))
    grown = config.build(ctx(), "test")
    assert set(paths(test)) <= set(paths(grown))


def test_image_folder_lists_a_split_in_hashed_order_so_its_first_images_span_the_classes(tmp_path: Path) -> None:
    """Evaluations read a split's first images: listed class by class, they would all be class 0."""
    root = tmp_path / "images"
    for name in ("a", "b", "c", "d"):
        for i in range(25):
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / f"{i:02d}.png").write_bytes(b"")  # listing only: never decoded here
    config = ImageFolderConfig(root=str(root), holdout_fraction=0.2)
    train = config.build(ctx(), "train")
    assert len(set(train.labels[:12].tolist())) == 4  # 12 of ~80: a class-by-class list gives one class
    assert train.labels.tolist() == [["a", "b", "c", "d"].index(path.parent.name) for path in paths(train)]
    assert paths(config.build(ctx(), "train")) == paths(train)  # the same order every time
    (root / "a" / "new.png").write_bytes(b"")
    grown = [path for path in paths(config.build(ctx(), "train")) if path.name != "new.png"]
    assert grown == paths(train)  # adding a file moves no other one


@pytest.mark.parametrize("resolution", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_converts_every_mode_to_the_context_shape(
    class_folder: Path, resolution: int, channels: int
) -> None:
    config = ImageFolderConfig(root=str(class_folder), holdout_fraction=0.0, channels=channels)
    dataset = config.build(ctx(resolution, channels), "train")
    assert isinstance(dataset, LabelledDataset)
    names = [path.name for path in paths(dataset)]
    with pytest.warns(UserWarning, match="broken.jpg"):
        images, _ = items(dataset, range(len(dataset)))
    assert images.shape == (len(dataset), channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert torch.all(images[names.index("transparent.png")] == 1)  # composited over white
    for gray in ("gray.png", "gray16.png"):  # 8 and 16 bits per pixel, both at 100/255
        assert torch.allclose(images[names.index(gray)], torch.tensor(100 / 127.5 - 1))


def test_image_folder_replaces_a_corrupt_file_by_the_next_one_and_counts_it(class_folder: Path) -> None:
    dataset = ImageFolderConfig(root=str(class_folder), holdout_fraction=0.0).build(ctx(16), "train")
    broken = [path.name for path in paths(dataset)].index("broken.jpg")
    assert dataset.num_skipped == 0
    with pytest.warns(UserWarning, match=r"skipping undecodable image .*broken\.jpg.*1 file\(s\) skipped"):
        image, label = dataset[broken]
    assert dataset.num_skipped == 1
    following = (broken + 1) % len(dataset)
    assert torch.equal(image, dataset[following][0]) and label == dataset.labels[following]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad file is not reported again
        assert torch.equal(dataset[broken][0], image)


def test_image_folder_with_no_decodable_file_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"garbage")
    dataset = ImageFolderConfig(root=str(tmp_path), holdout_fraction=0.0).build(ctx(16), "train")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the 1 image files"):
        dataset[0]


def test_image_folder_without_class_folders_is_unlabelled(tmp_path: Path) -> None:
    for i in range(6):
        save_rgb(tmp_path / f"{i}.png", 16, 16, (i * 40, 0, 0))
    dataset = ImageFolderConfig(root=str(tmp_path), holdout_fraction=0.0).build(ctx(16), "train")
    assert (dataset.num_classes, dataset.class_names, len(dataset)) == (0, [], 6)
    assert dataset[0][1] == -1


def test_image_folder_imagenet_layout_uses_train_and_val(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for name in ("b_dog", "a_cat"):
            for i in range(count):
                save_rgb(tmp_path / split / name / f"{i}.png", 20, 20, (0, 0, 0))
    config = ImageFolderConfig(root=str(tmp_path))
    train, test = config.build(ctx(16), "train"), config.build(ctx(16), "test")
    assert (len(train), len(test)) == (6, 4)
    assert train.class_names == test.class_names == ["a_cat", "b_dog"]
    assert test.labels.tolist() == [["a_cat", "b_dog"].index(path.parent.name) for path in paths(test)]
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1]
    save_rgb(tmp_path / "val" / "zebra" / "0.png", 20, 20, (0, 0, 0))
    with pytest.raises(DataError, match=r"val/zebra: class folder not among the training classes"):
        config.build(ctx(16), "test")


def test_image_folder_imagenet_layout_needs_a_val_folder(tmp_path: Path) -> None:
    save_rgb(tmp_path / "train" / "cat" / "0.png", 20, 20, (0, 0, 0))
    with pytest.raises(DataError, match=r"^\$\.data\.root: .*train exists but .*val does not"):
        ImageFolderConfig(root=str(tmp_path)).build(ctx(16), "test")


def test_image_folder_missing_or_empty_root_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^\$\.data\.root: folder not found: .*missing$"):
        ImageFolderConfig(root=str(tmp_path / "missing")).build(ctx(16), "train")
    (tmp_path / "readme.txt").write_text("no images here")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"^\$\.data\.root: no image files \(.*\) in "):
        ImageFolderConfig(root=str(tmp_path)).build(ctx(16), "train")


def test_image_folder_holdout_that_empties_a_split_is_a_data_error(tmp_path: Path) -> None:
    save_rgb(tmp_path / "cat" / "0.png", 20, 20, (0, 0, 0))
    message = r"\$\.data\.holdout_fraction: 0.0 of the 1 images .* leaves the test split empty"
    with pytest.raises(DataError, match=message):
        ImageFolderConfig(root=str(tmp_path), holdout_fraction=0.0).build(ctx(16), "test")


def test_image_folder_centre_crop_keeps_the_middle_square(tmp_path: Path) -> None:
    image = Image.new("RGB", (90, 30), (0, 0, 0))
    image.paste((255, 255, 255), (30, 0, 60, 30))  # only the centre square is white
    image.save(tmp_path / "wide.png")
    dataset = ImageFolderConfig(root=str(tmp_path), holdout_fraction=0.0).build(ctx(8), "train")
    assert torch.all(dataset[0][0] == 1)


def test_image_folder_respects_exif_orientation_and_decodes_large_jpegs_reduced(tmp_path: Path) -> None:
    stored = Image.new("RGB", (800, 400), (0, 0, 0))
    stored.paste((255, 255, 255), (400, 0, 800, 400))  # stored: left black, right white
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise: top black, bottom white
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    dataset = ImageFolderConfig(root=str(tmp_path), holdout_fraction=0.0).build(ctx(16), "train")
    image = dataset[0][0]
    assert image[:, :6].max() < -0.9 and image[:, -6:].min() > 0.9


def test_image_folder_augmentation_is_a_function_of_seed_epoch_and_index(class_folder: Path) -> None:
    config = ImageFolderConfig(root=str(class_folder), augment="resnet", holdout_fraction=0.0, seed=1)
    dataset = config.build(ctx(16), "train")
    pattern = Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3).astype(np.uint8))
    pattern.save(dataset.path(0))  # an image whose every crop looks different
    first, _ = items(dataset, [0, 0])
    dataset.set_epoch(1)
    second, _ = items(dataset, [0])
    resumed = config.build(ctx(16), "train")
    resumed.set_epoch(1)
    assert torch.equal(first[0], first[1])
    assert not torch.equal(first[0], second[0])
    assert torch.equal(resumed[0][0], second[0])
    other_seed = attrs.evolve(config, seed=2).build(ctx(16), "train")
    assert not torch.equal(other_seed[0][0], first[0])


def test_image_folder_test_split_is_never_augmented(class_folder: Path) -> None:
    augmented = ImageFolderConfig(root=str(class_folder), augment="distorted", holdout_fraction=0.5)
    plain = attrs.evolve(augmented, augment="none")
    test = augmented.build(ctx(16), "test")
    test.set_epoch(5)
    assert torch.equal(items(test, range(3))[0], items(plain.build(ctx(16), "test"), range(3))[0])


def test_image_folder_images_come_at_the_data_resolution(class_folder: Path) -> None:
    dataset = ImageFolderConfig(root=str(class_folder)).build(ctx(16, encoder_resolution=32), "train")
    assert dataset[0][0].shape == (3, 32, 32)


sizes = st.integers(min_value=1, max_value=400)
draws = st.lists(st.floats(0, 1, exclude_max=True), min_size=UNIFORMS_PER_CROP, max_size=UNIFORMS_PER_CROP)


@settings(max_examples=200, deadline=None)
@given(width=sizes, height=sizes, u=draws)
def test_resnet_crop_has_the_documented_area_and_aspect_and_fits(
    width: int, height: int, u: list[float]
) -> None:
    crop = random_resized(width, height, u)
    assert 0 <= crop.left and crop.left + crop.width <= width * (1 + 1e-9)
    assert 0 <= crop.top and crop.top + crop.height <= height * (1 + 1e-9)
    is_fallback = crop.width == crop.height == min(width, height)
    if not is_fallback:
        assert 0.08 - 1e-9 <= crop.width * crop.height / (width * height) <= 1 + 1e-9
        assert 3 / 4 - 1e-9 <= crop.width / crop.height <= 4 / 3 + 1e-9


@settings(max_examples=200, deadline=None)
@given(width=sizes, height=sizes, u=draws)
def test_distorted_crop_is_a_square_of_half_to_all_the_area_when_it_fits(
    width: int, height: int, u: list[float]
) -> None:
    crop = distorted(width, height, u)
    side = min(width, height)
    assert crop.width == crop.height <= side * (1 + 1e-9)
    assert 0 <= crop.left and crop.left + crop.width <= width * (1 + 1e-9)
    assert 0 <= crop.top and crop.top + crop.height <= height * (1 + 1e-9)
    fell_back = crop.width == side
    assert fell_back or 0.5 - 1e-9 <= crop.width * crop.height / (width * height) <= 1 + 1e-9
