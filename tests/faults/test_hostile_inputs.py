"""Hostile input from outside: recipes nested past any parser's recursion, device names that are not
devices, and checkpoint files whose every field lies (wrong JSON types, NaN weights). Each ends in
one `error:` line naming the key, option or file, exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bifamily.checkpoint import files
from bifamily.checkpoint.resume import RESUME_FILE
from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, read_snapshot
from bifamily.cli import main
from bifamily.errors import CheckpointError
from bifamily.interop import load_module

from tests.helpers.tiny_model import TINY_MODEL

RECIPE = '[run]\nname = "tiny"\nsteps = 4\nlog_every = 2\nsample_every = 1000\ncheckpoint_every = 2\n' + TINY_MODEL
DEEP = 3000  # levels: far past Python's recursion limit


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def refused(result, *expected: str) -> str:
    """Exit code 2 with one-line errors holding every ``expected`` text, and no traceback."""
    assert result.exit_code == 2, (result.exception, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), lines
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    return result.stderr


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def finished(recipe, tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2 and 4 (the latest)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


# -- recipes and overrides nested too deeply -------------------------------------------------------

NESTED_FILES = {
    "array": "[run]\nname = " + "[" * DEEP + "]" * DEEP,
    "inline-table": "[run]\nname = " + "{a = " * DEEP + "1" + "}" * DEEP,
    "table-header": "[" + ".".join(["a"] * DEEP) + "]\nx = 1",
    "dotted-key": "[run]\n" + ".".join(["a"] * DEEP) + " = 1",
    "just-too-deep": "[run]\nname = " + "[" * 31 + "]" * 31,
}


@pytest.mark.parametrize("content", NESTED_FILES.values(), ids=NESTED_FILES)
@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"]], ids=["validate", "dry-run"])
def test_a_recipe_nested_too_deeply_is_one_line(tmp_path, recipe, command, content):
    path = tmp_path / "deep.toml"
    path.write_text(f'extends = "{recipe}"\n{content}\n')
    refused(invoke(command[0], str(path), *command[1:]), "deep.toml: $: tables or arrays nested deeper than 32 levels")


def test_a_long_chain_of_extends_is_one_line(tmp_path, recipe):
    (tmp_path / "r0.toml").write_text(f'extends = "{recipe}"\n')
    for i in range(1, 200):
        (tmp_path / f"r{i}.toml").write_text(f'extends = "r{i - 1}.toml"\n')
    refused(invoke("validate", str(tmp_path / "r199.toml")), "$.extends: a chain of more than 32 recipes")


@pytest.mark.parametrize(
    "override",
    [
        "run.name=" + "[" * DEEP + "]" * DEEP,
        "run.name=" + "{a=" * DEEP + "1" + "}" * DEEP,
        ".".join(["a"] * DEEP) + "=1",
        "run.name=" + "[" * 40 + "]" * 40,
    ],
    ids=["array", "inline-table", "dotted-key", "just-too-deep"],
)
def test_an_override_nested_too_deeply_is_one_line(recipe, override):
    stderr = refused(invoke("validate", str(recipe), "--set", override), "tables or arrays nested deeper than 32 levels")
    assert len(stderr) < 300  # a key of thousands of parts is abbreviated


# -- devices ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["tpu:7", "banana", "cuda:-1", "cuda:", "CPU", "cpu:0 ", "cuda:1:2", ""])
def test_a_device_that_is_not_one_is_a_key_error(recipe, device):
    expected = f"$.run.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
    for command in (["validate"], ["run", "--dry-run"]):
        refused(invoke(command[0], str(recipe), *command[1:], "--set", f"run.device={json.dumps(device)}"), expected)


@pytest.mark.parametrize("command", ["sample", "eval", "reconstruct"])
def test_a_device_option_that_is_not_one_names_the_option(finished, tmp_path, command):
    outputs = [] if command == "eval" else ["-o", str(tmp_path / "x.png")]
    result = invoke(command, str(finished), *outputs, "--device", "tpu:7")
    refused(result, "--device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu:7'")


# -- checkpoint files whose metadata lies -----------------------------------------------------------


def rewrite(folder: Path, snapshot=None, resume=None) -> None:
    """Rewrite a checkpoint's files with their metadata and tensors changed, checksums kept valid: a
    file as a careless tool or a stranger might produce, not a damaged one."""
    tensors, metadata = files.read_file(folder / SNAPSHOT_FILE, "bifamily.snapshot/1")
    metadata = {k: v for k, v in metadata.items() if k != "sha256"}
    if snapshot is not None:
        snapshot(tensors, metadata)
    data, sha = files.serialize(tensors, metadata)
    (folder / SNAPSHOT_FILE).write_bytes(data)
    resume_tensors, resume_metadata = files.read_file(folder / RESUME_FILE, "bifamily.resume/1")
    resume_metadata = {k: v for k, v in resume_metadata.items() if k != "sha256"} | {"snapshot_sha256": sha}
    if resume is not None:
        resume(resume_tensors, resume_metadata)
    (folder / RESUME_FILE).write_bytes(files.serialize(resume_tensors, resume_metadata)[0])


def set_metadata(key: str, value: str):
    return lambda tensors, metadata: metadata.__setitem__(key, value)


NOT_OBJECTS = {
    "list": ("[1, 2]", "must hold a JSON object, got array"),
    "string": ('"recipe"', "must hold a JSON object, got string"),
    "number": ("3", "must hold a JSON object, got integer"),
    "null": ("null", "must hold a JSON object, got null"),
    "nested": ("[" * DEEP + "]" * DEEP, "is not valid JSON (nested too deeply)"),
    "deep-object": ('{"a": ' * 900 + "1" + "}" * 900, "nested deeper than 32 levels"),
    "broken": ("{", "is not valid JSON"),
}


@pytest.fixture
def copied(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def readers(recipe: Path, out: Path, tmp_path: Path) -> dict:
    """Every way a snapshot is read, each returning its error text (or raising AssertionError)."""

    def cli(*args):
        return lambda: refused(invoke(*args))

    def library():
        with pytest.raises(CheckpointError) as caught:
            load_module(out)
        return str(caught.value)

    return {
        "resume": cli("run", str(recipe), "--out", str(out), "--resume", "--no-progress", "--set", "run.steps=6"),
        "sample": cli("sample", str(out), "-o", str(tmp_path / "s.png")),
        "eval": cli("eval", str(out), "--metrics", "knn"),
        "load_module": library,
    }


@pytest.mark.parametrize("value, expected", NOT_OBJECTS.values(), ids=NOT_OBJECTS)
@pytest.mark.parametrize("reader", ["sample", "eval", "load_module"])
def test_a_snapshot_recipe_that_is_not_an_object_is_refused(recipe, copied, tmp_path, reader, value, expected):
    rewrite(copied / "checkpoints" / "step-00000004", snapshot=set_metadata("recipe", value))
    message = readers(recipe, copied, tmp_path)[reader]()
    assert "step-00000004/snapshot.safetensors: " in message and expected in message
    assert not (tmp_path / "s.png").exists()


RESUME_FIELDS = {
    "extra-list": ("extra", "[]", "metadata 'extra' must hold a JSON object, got array"),
    "extra-without-data": ("extra", '{"step": 4}', "'extra' lacks the data position"),
    "extra-bad-position": ("extra", '{"data": {"epoch": "x", "batch": 0}}', "'extra' lacks the data position"),
    "extra-bad-guard": ("extra", '{"data": {"epoch": 0, "batch": 0}, "guard": []}', "guard or scaler state"),
    "optimizers-string": ("optimizers", '"adam"', "metadata 'optimizers' must hold a JSON object, got string"),
    "optimizers-inner": ("optimizers", '{"d": [], "ge": []}', "malformed resume metadata"),
    "step-text": ("step", '"four"', "metadata 'step' must hold a JSON integer, got string"),
    "step-bool": ("step", "true", "metadata 'step' must hold a JSON integer, got boolean"),
}


@pytest.mark.parametrize("key, value, expected", RESUME_FIELDS.values(), ids=RESUME_FIELDS)
def test_a_resume_file_whose_fields_have_the_wrong_shape_is_refused(recipe, copied, tmp_path, key, value, expected):
    rewrite(copied / "checkpoints" / "step-00000004", resume=set_metadata(key, value))
    message = readers(recipe, copied, tmp_path)["resume"]()
    assert "step-00000004/resume.safetensors" in message and expected in message
    assert sorted(p.name for p in (copied / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]


def test_safetensors_metadata_that_is_not_a_table_of_strings_is_refused(tmp_path):
    header = json.dumps({"__metadata__": ["not", "a", "table"]}).encode()
    path = tmp_path / SNAPSHOT_FILE
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="its metadata is not a table of strings"):
        read_snapshot(path)


# -- run names that would put the run directory elsewhere ------------------------------------------

NAME_RULE = "must be one folder name of letters, digits, '.', '_' and '-', not starting with '.'"


@pytest.mark.parametrize(
    "name",
    ["../../../../escaped-by-name", "a/b", "..", ".", ".hidden", "a\\b", "/abs", "a b", "*", "x" * 101, "ok\n"],
)
def test_a_run_name_that_is_not_one_folder_name_is_refused_and_writes_nothing(recipe, tmp_path, name):
    override = f"run.name={json.dumps(name)}"
    refused(invoke("validate", str(recipe), "--set", override), f"$.run.name: {NAME_RULE}")
    root = tmp_path / "a" / "b" / "c" / "d" / "runs"
    result = invoke("run", str(recipe), "--set", override, "--set", f"run.out_root={json.dumps(str(root))}")
    refused(result, f"$.run.name: {NAME_RULE}")
    assert list(tmp_path.rglob("*")) == []


def test_a_name_from_the_file_stem_is_made_safe(tmp_path):
    path = tmp_path / "my first (try).toml"
    path.write_text(RECIPE.replace('name = "tiny"', ""))
    from bifamily.plugins import default_plugins
    from bifamily.recipe import load

    assert load(path, default_plugins()).run.name == "my-first-try-"


def test_resume_finds_its_run_by_name_not_by_pattern(tmp_path):
    from bifamily.rundir import latest_run_dir

    for folder in ("00000-a-b", "00001-ab"):
        (tmp_path / folder / "checkpoints").mkdir(parents=True)
    assert latest_run_dir(tmp_path, "ab") == tmp_path / "00001-ab"
    assert latest_run_dir(tmp_path, "a-b") == tmp_path / "00000-a-b"
    assert latest_run_dir(tmp_path / "missing", "ab") is None


@pytest.mark.parametrize("name", ["../up", "a/b", ".x", ""])
def test_a_plugin_cannot_register_a_name_that_is_not_one_folder_name(name):
    from bifamily.errors import PluginError
    from bifamily.plugins import Registry

    with pytest.raises(PluginError, match="registered a metric with an invalid name"):
        Registry().add("metric", name, object, "hostile")


# -- weights that are not finite --------------------------------------------------------------------


def poison(value: float, prefix: str):
    def change(tensors, metadata):
        name = next(n for n in sorted(tensors) if n.startswith(prefix) and tensors[n].is_floating_point())
        tensors[name] = tensors[name].clone().view(-1).index_fill(0, torch.tensor([0]), value).view_as(tensors[name])

    return change


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("reader, prefix", [
    ("resume", "discriminator."), ("sample", "generator_ema."), ("eval", "encoder_ema."), ("load_module", "encoder_ema."),
])
def test_weights_that_are_not_finite_are_refused_everywhere_naming_the_tensor(
    recipe, copied, tmp_path, reader, prefix, value
):
    rewrite(copied / "checkpoints" / "step-00000004", snapshot=poison(value, prefix))
    message = readers(recipe, copied, tmp_path)[reader]()
    assert f"step-00000004/snapshot.safetensors: tensor {prefix}" in message
    assert "holds NaN or infinite values" in message
    assert not (tmp_path / "s.png").exists()


# -- a `latest` pointer that is wrong ---------------------------------------------------------------

WRONG_POINTERS = {
    "missing": ("step-00000009", "which is missing"),
    "outside": ("../../elsewhere/step-00000004", "which is not a checkpoint folder of this run"),
    "absolute": ("/tmp/step-00000004", "which is not a checkpoint folder of this run"),
    "empty": ("step-00000007", "which is empty"),
    "garbage": ("\x00\x01 not a name", "which is not a checkpoint folder of this run"),
}


@pytest.mark.parametrize("target, why", WRONG_POINTERS.values(), ids=WRONG_POINTERS)
def test_a_wrong_pointer_is_named_passed_over_for_the_newest_whole_checkpoint_and_repaired(copied, target, why):
    from bifamily.checkpoint.manager import CheckpointManager

    (copied / "checkpoints" / "step-00000007").mkdir()
    (copied / "checkpoints" / "latest").write_text(target + "\n")
    manager = CheckpointManager(copied / "checkpoints")
    with pytest.warns(UserWarning) as warned:
        folder = manager.latest()
    assert folder == copied / "checkpoints" / "step-00000004"
    [warning] = [str(w.message) for w in warned]
    assert "checkpoints/latest names " in warning and why in warning
    assert warning.endswith("using the newest whole checkpoint, step-00000004 (resuming repairs the pointer)")
    manager.repair_pointer(folder)
    assert (copied / "checkpoints" / "latest").read_text() == "step-00000004\n"
    assert [p.name for p in (copied / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_resuming_past_a_wrong_pointer_warns_once_and_repairs_it(recipe, copied):
    (copied / "checkpoints" / "latest").write_text("step-00000009\n")
    with pytest.warns(UserWarning, match="latest names 'step-00000009', which is missing; using .* step-00000004"):
        result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(copied), "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "at step 4" in result.stderr
    assert (copied / "checkpoints" / "latest").read_text() == "step-00000004\n"
