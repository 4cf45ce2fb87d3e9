"""`bifamily new-plugin`: the generated package is wired correctly and passes its own tests at once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bifamily import scaffold
from bifamily.errors import PluginError
from bifamily.plugins import AUTOLOAD_ENV, KINDS, load_plugins
from bifamily.scaffold import SCAFFOLD_KINDS, new_plugin


def generate(*args: str) -> Result:
    return CliRunner().invoke(new_plugin, list(args))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated package per kind: kind -> its folder."""
    root = tmp_path_factory.mktemp("plugins")
    folders = {}
    for kind in SCAFFOLD_KINDS:
        folders[kind] = root / f"bifamily-scaffolded-{kind}"
        result = generate(f"scaffolded-{kind}", "--kind", kind, "--dir", str(folders[kind]))
        assert result.exit_code == 0, result.output
    return folders


def test_every_model_kind_but_data_can_be_scaffolded() -> None:
    assert set(SCAFFOLD_KINDS) == set(KINDS) - {"data"}


def test_generated_packages_pass_their_own_tests(generated: dict[str, Path]) -> None:
    """All kinds in one pytest process: each package importable from its src/ only, not installed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(folder / "src") for folder in generated.values())}
    tests = [str(folder / "tests") for folder in generated.values()]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=next(iter(generated.values())).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{2 * len(SCAFFOLD_KINDS)} passed" in result.stdout


@pytest.mark.parametrize("kind", sorted(SCAFFOLD_KINDS))
def test_pyproject_declares_the_entry_point_and_the_src_layout(generated: dict[str, Path], kind: str) -> None:
    pyproject = tomllib.loads((generated[kind] / "pyproject.toml").read_text())
    name, package = f"scaffolded_{kind}", f"bifamily_scaffolded_{kind}"
    assert pyproject["project"]["name"] == f"bifamily-scaffolded-{kind}"
    assert pyproject["project"]["entry-points"] == {"bifamily": {name: package}}
    assert "bifamily" in pyproject["project"]["dependencies"]
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert (generated[kind] / "src" / package / "__init__.py").is_file()
    assert f'kind = "{name}"' in (generated[kind] / "README.md").read_text()


@pytest.mark.parametrize("kind", ["prior", "loss"])
def test_the_entry_point_loads_through_bifamily_plugin_machinery(
    generated: dict[str, Path], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stand in for `pip install`: a *.dist-info with the entry points the generated pyproject declares."""
    pyproject = tomllib.loads((generated[kind] / "pyproject.toml").read_text())
    [(name, target)] = pyproject["project"]["entry-points"]["bifamily"].items()
    info = tmp_path / f"bifamily_scaffolded_{kind}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pyproject['project']['name']}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[bifamily]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(generated[kind] / "src"))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    try:
        plugins = load_plugins()
    finally:  # forget the generated module: other tests generate packages of the same name
        sys.modules.pop(target, None)
    plugins.check_healthy()
    entry = plugins.registry.get(kind, name)
    assert entry is not None and entry.plugin == name
    info = next(i for i in plugins.infos if i.name == name)
    assert (info.distribution, info.version) == (f"bifamily-scaffolded-{kind}", "0.1.0")


def test_default_folder_is_the_distribution_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = generate("my-laplace", "--kind", "prior")
    assert result.exit_code == 0, result.output
    package = tmp_path / "bifamily-my-laplace" / "src" / "bifamily_my_laplace"
    assert sorted(p.name for p in package.iterdir()) == ["__init__.py", "prior.py"]
    assert "class MyLaplacePriorConfig" in (package / "prior.py").read_text()
    assert (tmp_path / "bifamily-my-laplace" / "tests" / "test_my_laplace.py").is_file()
    assert "pip install -e 'bifamily-my-laplace[test]'" in result.output


def test_an_empty_existing_folder_is_used(tmp_path: Path) -> None:
    result = generate("empty-ok", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "src" / "bifamily_empty_ok" / "generator.py").is_file()


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("Laplace", "prior", "'Laplace' is not a plugin name"),
        ("1prior", "prior", "'1prior' is not a plugin name"),
        ("my--prior", "prior", "'my--prior' is not a plugin name"),
        ("my prior", "prior", "'my prior' is not a plugin name"),
        ("x" * 41, "prior", "at most 40 characters"),
        ("dcgan", "generator", "a package named bifamily_dcgan is importable already"),
        ("uniform", "prior", "a prior named 'uniform' is registered already \\(by plugin 'priors'\\)"),
    ],
)
def test_an_invalid_name_is_refused_with_exit_code_2(tmp_path: Path, name: str, kind: str, message: str) -> None:
    result = generate(name, "--kind", kind, "--dir", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "Invalid value for NAME" in result.output
    assert re.search(message, result.output)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("occupied", ["non-empty folder", "file"])
def test_an_occupied_target_is_refused_with_exit_code_2(tmp_path: Path, occupied: str) -> None:
    target = tmp_path / "target"
    if occupied == "file":
        target.write_text("keep me")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("keep me")
    result = generate("fresh", "--dir", str(target))
    assert result.exit_code == 2
    assert "Invalid value for --dir" in result.output
    assert ("is not a folder" if occupied == "file" else "is not empty") in result.output
    assert (target.read_text() if occupied == "file" else (target / "notes.txt").read_text()) == "keep me"


def test_an_unknown_kind_is_refused_with_exit_code_2(tmp_path: Path) -> None:
    result = generate("fresh", "--kind", "data", "--dir", str(tmp_path / "out"))
    assert result.exit_code == 2 and "'data' is not one of" in result.output


def test_clashing_installed_plugins_are_reported_with_exit_code_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def clash() -> None:
        raise PluginError("prior 'laplace' is registered twice: by plugin 'a' and by plugin 'b'")

    monkeypatch.setattr(scaffold, "default_plugins", clash)
    result = generate("fresh", "--dir", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "Error: prior 'laplace' is registered twice" in result.output
