"""``bifamily new-plugin``: write a plugin package whose contract tests pass as generated.

The package registers one component through the ``bifamily`` entry-point group, from templates in
``bifamily/templates/plugin`` (``string.Template`` syntax: ``$name``; ``$$`` for a literal ``$``).
"""

from __future__ import annotations

import importlib.util
import re
from importlib.resources import files
from pathlib import Path
from string import Template

import attrs
import click

from bifamily.errors import BifamilyError
from bifamily.plugins import KINDS, default_plugins

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*")
MAX_NAME_LENGTH = 40


@attrs.frozen
class KindTemplate:
    """What differs between the kinds: the component's class name suffix and the contract test."""

    suffix: str
    check_imports: str
    check_call: str


SCAFFOLD_KINDS: dict[str, KindTemplate] = {
    "generator": KindTemplate("Generator", "check_generator, check_plugin", "check_generator($config_class())"),
    "encoder": KindTemplate(
        "Encoder",
        "check_encoder, check_plugin, component_config",
        'check_encoder($config_class(), component_config("posterior", "gaussian"))',
    ),
    "prior": KindTemplate("Prior", "check_plugin, check_prior", "check_prior($config_class(dim=16))"),
    "posterior": KindTemplate(
        "Posterior",
        "check_encoder, check_plugin, component_config",
        'check_encoder(component_config("encoder", "dcgan", ch=8, max_ch=32), $config_class())',
    ),
    "discriminator": KindTemplate(
        "Discriminator", "check_discriminator, check_plugin", 'check_discriminator($config_class(), scores=("s_xz",))'
    ),
    "loss": KindTemplate("Loss", "check_loss, check_plugin", "check_loss($config_class())"),
}


@attrs.frozen
class PluginNames:
    """Every name the package uses, derived from the NAME given on the command line."""

    name: str  # component and entry-point name: "my_prior"
    distribution: str  # "bifamily-my-prior"
    package: str  # "bifamily_my_prior"
    camel: str  # "MyPrior"

    @classmethod
    def from_argument(cls, argument: str) -> PluginNames:
        name = argument.replace("-", "_")
        return cls(
            name=name,
            distribution=f"bifamily-{name.replace('_', '-')}",
            package=f"bifamily_{name}",
            camel="".join(part.capitalize() for part in name.split("_")),
        )


def _check_name(argument: str, kind: str) -> PluginNames:
    if len(argument) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(argument):
        raise click.BadParameter(
            f"{argument!r} is not a plugin name: use lowercase letters, digits and single '-' or '_' between "
            f"them, starting with a letter, at most {MAX_NAME_LENGTH} characters (e.g. laplace, my-prior)",
            param_hint="NAME",
        )
    names = PluginNames.from_argument(argument)
    if importlib.util.find_spec(names.package) is not None:
        raise click.BadParameter(f"a package named {names.package} is importable already", param_hint="NAME")
    try:
        entry = default_plugins().registry.get(kind, names.name)
    except BifamilyError as exc:  # the installed plugins clash: same exit code as the other commands
        error = click.ClickException(str(exc))
        error.exit_code = 2
        raise error from exc
    if entry is not None:
        raise click.BadParameter(
            f"a {kind} named {names.name!r} is registered already (by plugin {entry.plugin!r}); pick another name",
            param_hint="NAME",
        )
    return names


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "is not a folder" if not target.is_dir() else "is not empty"
        raise click.BadParameter(f"{target} {what}; give a new or empty folder", param_hint="--dir")


def _substitutions(names: PluginNames, kind: str, target: Path) -> dict[str, str]:
    template = SCAFFOLD_KINDS[kind]
    config_class = f"{names.camel}{template.suffix}Config"
    return {
        "name": names.name,
        "distribution": names.distribution,
        "package": names.package,
        "kind": kind,
        "hook": KINDS[kind],
        "component_class": f"{names.camel}{template.suffix}",
        "config_class": config_class,
        "check_imports": template.check_imports,
        "check_call": Template(template.check_call).substitute(config_class=config_class),
        "directory": str(target),
    }


def plugin_files(names: PluginNames, kind: str, target: Path) -> dict[str, str]:
    """Relative path -> text of every file of the package."""
    root = files("bifamily") / "templates" / "plugin"
    values = _substitutions(names, kind, target)
    sources = {
        "pyproject.toml": root / "pyproject.toml.tmpl",
        "README.md": root / "README.md.tmpl",
        f"src/{names.package}/__init__.py": root / "src" / "__init__.py.tmpl",
        f"src/{names.package}/{kind}.py": root / "components" / f"{kind}.py.tmpl",
        f"tests/test_{names.name}.py": root / "tests" / "test_plugin.py.tmpl",
    }
    return {path: Template(source.read_text(encoding="utf-8")).substitute(values) for path, source in sources.items()}


@click.command("new-plugin")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    help="Folder to write the package to; must be new or empty (default: ./bifamily-NAME).",
)
@click.option(
    "--kind",
    type=click.Choice(list(SCAFFOLD_KINDS)),
    default="generator",
    show_default=True,
    help="The component the plugin registers.",
)
def new_plugin(name: str, directory: Path | None, kind: str) -> None:
    """Write a new plugin package NAME that registers one KIND component.

    The package has a pyproject.toml with the entry point, the registration hook, the component with
    its config class, a README and contract tests (bifamily.testing) that pass as generated.

    \b
    Examples:
      bifamily new-plugin laplace --kind prior
      bifamily new-plugin my-gen --dir ~/src/bifamily-my-gen
    """
    names = _check_name(name, kind)
    target = directory if directory is not None else Path(names.distribution)
    _check_target(target)
    for relative, text in plugin_files(names, kind, target).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {target}/: distribution {names.distribution}, package {names.package}, {kind} {names.name!r}")
    click.echo("next:")
    click.echo(f"  pip install -e '{target}[test]'")
    click.echo(f"  cd {target} && pytest")
    click.echo(f'  use it in a recipe: [{kind}] kind = "{names.name}"')
