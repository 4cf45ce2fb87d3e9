"""The torchvision data sets, fed small fake files laid out exactly as torchvision stores each one.

The real files' md5 sums cannot match fake ones, so torchvision's integrity check is replaced by an
existence check; everything else (paths, parsing) is torchvision's own. Nothing touches the network:
downloads meet an ``urlopen`` that raises, as on a machine without one.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets
from click.testing import CliRunner
from PIL import Image

from bifamily.cli import main
from bifamily.config import structure
from bifamily.context import BuildContext
from bifamily.errors import DataError, RecipeError
from bifamily.evaluation.metrics import evaluated
from bifamily_datasets import TorchvisionConfig

from tests.helpers.idx_files import write_idx

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "recipes" / "quickstart.toml")
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def offline_and_md5_free(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    for module in ("cifar", "svhn", "stl10", "celeba"):
        monkeypatch.setattr(getattr(torchvision.datasets, module), "check_integrity", lambda path, md5=None: os.path.isfile(path))


def config(**data):
    return structure(data, TorchvisionConfig, "$.data")


def ctx(resolution=32, channels=3):
    return BuildContext(resolution=resolution, channels=channels, latent_dim=4)


def images(n, *shape):
    return RNG.integers(0, 256, (n, *shape), dtype=np.uint8)


def write_cifar10(root: Path, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": images(per_batch, 3072), "labels": [i % 10 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def write_mnist(root: Path, folder="MNIST"):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 12), ("t10k", 6)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images(n, 28, 28))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def write_svhn(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 8), ("test", 4)):
        labels = (np.arange(n) % 10 + 1).reshape(n, 1)  # SVHN's digit 0 is label 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": images(n, 32, 32, 3).transpose(1, 2, 3, 0), "y": labels})


def write_stl10(root: Path):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, n in (("train", 6), ("test", 4), ("unlabeled", 9)):
        images(n, 3, 96, 96).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")


def write_celeba(root: Path, n=6):
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        Image.fromarray(images(1, 218, 178, 3)[0]).save(folder / "img_align_celeba" / name)
    partition = [0, 0, 0, 1, 2, 2]
    (folder / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(names, partition)))
    (folder / "identity_CelebA.txt").write_text("".join(f"{f} {i}\n" for i, f in enumerate(names)))
    (folder / "list_attr_celeba.txt").write_text(
        f"{n}\nSmiling Young\n" + "".join(f"{f} 1 -1\n" for f in names)
    )
    (folder / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "".join(f"{f} 1 2 3 4\n" for f in names)
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y\n" + "".join(f"{f} 69 109\n" for f in names)
    )


def check_items(data, n, resolution, channels):
    assert len(data) == n
    batch = data.__getitems__(list(range(n)))
    image = torch.stack([item[0] for item in batch])
    assert image.shape == (n, channels, resolution, resolution) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    return [item[1] for item in batch]


def test_cifar10_splits_labels_and_class_names(tmp_path):
    write_cifar10(tmp_path)
    data = config(name="cifar10", root=str(tmp_path))
    train, test = data.build(ctx(), "train"), data.build(ctx(), "test")
    assert check_items(train, 20, 32, 3) == [i % 10 for i in range(4)] * 5
    assert check_items(test, 4, 32, 3) == [0, 1, 2, 3]
    assert train.num_classes == 10 and train.class_names[0] == "airplane"
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())["data"][0]
    expected = torch.from_numpy(raw.reshape(3, 32, 32)).float() / 127.5 - 1
    assert torch.allclose(test[0][0], expected)
    assert check_items(data.build(ctx(16, 1), "test"), 4, 16, 1)  # RGB to grey, resized


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_and_fashion_from_raw_idx_files(tmp_path, name, folder):
    write_mnist(tmp_path, folder)
    data = config(name=name, root=str(tmp_path), channels=1)
    assert check_items(data.build(ctx(32, 1), "train"), 12, 32, 1) == [i % 10 for i in range(12)]
    assert check_items(data.build(ctx(32, 3), "test"), 6, 32, 3) == list(range(6))  # grey repeated to RGB


def test_svhn_maps_digit_ten_to_zero(tmp_path):
    write_svhn(tmp_path)
    data = config(name="svhn", root=str(tmp_path))
    assert check_items(data.build(ctx(), "train"), 8, 32, 3) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert check_items(data.build(ctx(), "test"), 4, 32, 3) == [1, 2, 3, 4]
    assert data.build(ctx(), "test").num_classes == 10


def test_stl10_trains_on_unlabelled_images_and_evaluates_on_labelled_ones(tmp_path):
    write_stl10(tmp_path)
    labelled = config(name="stl10", root=str(tmp_path)).build(ctx(64), "train")
    assert check_items(labelled, 6, 64, 3) == [0, 1, 2, 3, 4, 5] and labelled.class_names[1] == "class1"
    for split, n in (("unlabeled", 9), ("train+unlabeled", 15)):
        train = config(name="stl10", root=str(tmp_path), train_split=split, resolution=64).build(ctx(64), "train")
        assert check_items(train, n, 64, 3) == [-1] * n and train.num_classes == 0
        assert evaluated(train).num_classes == 10 and len(evaluated(train)) == 6
    test = config(name="stl10", root=str(tmp_path), train_split="unlabeled").build(ctx(96), "test")
    assert check_items(test, 4, 96, 3) == [0, 1, 2, 3] and evaluated(test) is test


def test_celeba_is_centre_cropped_unlabelled_faces(tmp_path):
    write_celeba(tmp_path)
    data = config(name="celeba", root=str(tmp_path))
    assert check_items(data.build(ctx(64), "train"), 3, 64, 3) == [-1, -1, -1]
    test = data.build(ctx(140), "test")
    assert check_items(test, 2, 140, 3) == [-1, -1] and test.num_classes == 0
    face = np.asarray(Image.open(tmp_path / "celeba" / "img_align_celeba" / "000005.jpg"))
    centre = torch.from_numpy(face[39:179, 19:159].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(test[0][0], centre)


def test_missing_files_name_the_folder_and_the_download_option(tmp_path):
    with pytest.raises(DataError) as error:
        config(name="cifar10", root=str(tmp_path)).build(ctx(), "train")
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "--set data.download=true" in message
    assert "\n" not in message and not any(tmp_path.iterdir())


def test_download_without_network_says_the_download_failed(tmp_path):
    with pytest.raises(DataError) as error:
        config(name="svhn", root=str(tmp_path / "svhn"), download=True).build(ctx(), "train")
    message = str(error.value)
    assert message.startswith("$.data.download: downloading svhn into") and "failed" in message
    assert "\n" not in message


def test_bad_name_split_and_resolution_are_one_line_each_with_the_key():
    with pytest.raises(RecipeError, match=r"\$\.data\.name: must be one of 'mnist', 'fashion_mnist', 'cifar10', 'svhn', 'stl10', 'celeba'"):
        config(name="imagenet")
    with pytest.raises(RecipeError, match=r"\$\.data\.train_split: cifar10 has no training split 'unlabeled'; its splits: train$"):
        config(name="cifar10", train_split="unlabeled")
    with pytest.raises(RecipeError, match=r"^\$\.data\.resolution: cifar10 provides images up to 32x32, not 64"):
        config(name="cifar10", resolution=64).build(ctx(64), "train")


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "data, expected",
    [
        ('{kind = "torchvision", name = "cifar10", root = "ROOT"}', "--set data.download=true"),
        ('{kind = "torchvision", name = "cifar10", root = "ROOT", download = true}', "downloading cifar10 into"),
        ('{kind = "torchvision", name = "cifar100", root = "ROOT"}', "$.data.name: must be one of"),
        ('{kind = "torchvision", name = "svhn", root = "ROOT", train_split = "extra"}', "$.data.train_split: svhn has no"),
    ],
)
def test_run_refuses_with_exit_2_and_writes_nothing(tmp_path, data, expected):
    out = tmp_path / "run"
    result = invoke("run", QUICKSTART, "--set", f"data={data.replace('ROOT', str(tmp_path / 'data'))}", "--out", str(out))
    assert result.exit_code == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()
