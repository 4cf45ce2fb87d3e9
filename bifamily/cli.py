"""The ``bifamily`` command line.

Exit codes: 0 success; 1 an unexpected internal error (a bug: the traceback is printed); 2 bad input
(recipe, override, plugin, data path, checkpoint) reported as one line per problem, no traceback.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import click
import tomli_w

from bifamily import __version__
from bifamily.errors import BifamilyError, RecipeError
from bifamily.plugins import KINDS, PluginSet, default_plugins
from bifamily.recipe import Recipe, load

EXIT_BAD_INPUT = 2


def _fail(exc: BifamilyError) -> None:
    for line in exc.lines():
        click.echo(f"error: {line}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BifamilyError as exc:
            _fail(exc)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _plugins(strict: bool = True) -> PluginSet:
    plugins = default_plugins()
    if strict:
        plugins.check_healthy()
    return plugins


def _load(recipe_path: str, overrides: tuple[str, ...]) -> Recipe:
    return load(recipe_path, _plugins(), list(overrides))


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key (typed as TOML: 200, 1e-4, true, \"text\", {kind = \"...\"}). Repeatable.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bifamily")
def main() -> None:
    """bifamily: BiGAN, ALI and BigBiGAN from declarative TOML recipes.

    \b
    Examples:
      bifamily run recipes/quickstart.toml
      bifamily run recipes/bigan.toml --set run.steps=200 --out runs/try
      bifamily validate recipes/ali.toml
      bifamily plugins
    """


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: RUN.out_root/NNNNN-NAME).")
@click.option("--resume", is_flag=True, help="Continue the run in --out (or the latest run of this recipe) from its latest checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print the resolved recipe and exit.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on when stderr is a terminal).")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    metavar="N",
    help="Train on N processes of this machine (one per GPU; gloo on CPU), started by torchrun "
    "(torch.distributed.run). Several machines: start torchrun yourself (docs/distributed.md).",
)
@_guarded
def run(
    recipe: str,
    overrides: tuple[str, ...],
    out: str | None,
    resume: bool,
    dry_run: bool,
    progress: bool | None,
    nproc: int | None,
) -> None:
    """Train the model a RECIPE describes.

    \b
    Examples:
      bifamily run recipes/quickstart.toml
      bifamily run recipes/bigan.toml --set optim.d_lr=2e-4 --set run.steps=200 --out runs/bigan
      bifamily run recipes/bigan.toml --out runs/bigan --resume
      bifamily run recipes/bigbigan.toml --nproc 8
      torchrun --nproc-per-node=8 -m bifamily run recipes/bigbigan.toml
    """
    from bifamily import distributed
    from bifamily.session import choose_run_dir, prepare, run_training

    resolved = _load(recipe, overrides)
    if dry_run:
        click.echo(tomli_w.dumps(resolved.to_dict()), nl=False)
        return
    show_progress = sys.stderr.isatty() if progress is None else progress
    if nproc is not None and nproc > 1:
        _launch(resolved, recipe, overrides, out, resume, show_progress, nproc)
        return
    world = distributed.world_from_environment(resolved.run.device)
    with distributed.joined(world, resolved.train.collective_timeout_s):
        prepared = prepare(resolved, world)
        run_dir = world.on_main(lambda: choose_run_dir(resolved, out, resume))
        report = run_training(prepared, run_dir, resume=resume, world=world, progress=show_progress)
    if not world.is_main:
        return
    click.echo(f"run directory: {report['run_dir']}")
    if "probe_top1" in report:
        click.echo(
            f"linear probe top-1 on held-out images: EMA encoder {100 * report['probe_top1']:.1f}% "
            f"vs the same encoder at initialisation {100 * report['probe_top1_init']:.1f}%"
        )


def _launch(
    resolved: Recipe,
    recipe: str,
    overrides: tuple[str, ...],
    out: str | None,
    resume: bool,
    progress: bool,
    nproc: int,
) -> None:
    """``run --nproc N``: check what can be checked here, choose the run directory, hand over to torchrun."""
    from bifamily import distributed
    from bifamily.session import choose_run_dir

    if distributed.launched_by_torchrun():
        raise BifamilyError("--nproc: this process was started by torchrun already; drop --nproc")
    device = distributed.resolve_device(resolved.run.device, local_rank=nproc - 1, world_size=nproc)
    problems = distributed.config_problems(resolved.train, nproc, device)
    if problems:
        raise RecipeError(problems, source=resolved.source)
    run_dir = choose_run_dir(resolved, out, resume)
    command = ["run", recipe, *(arg for o in overrides for arg in ("--set", o)), "--out", str(run_dir)]
    arguments = [*command, "--progress" if progress else "--no-progress", *(["--resume"] if resume else [])]
    try:
        distributed.launch(nproc, arguments)
    except distributed.RankFailed as exc:
        click.echo(f"error: {exc}", err=True)
        if (run_dir / "checkpoints" / "latest").exists():
            again = shlex.join(["bifamily", *command, "--resume", "--nproc", str(nproc)])
            click.echo(f"error: continue from the last checkpoint: {again}", err=True)
        sys.exit(EXIT_BAD_INPUT if exc.exitcode == EXIT_BAD_INPUT else 1)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@_guarded
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Build every component of RECIPE (no training), check they agree, print parameter counts.

    \b
    Example:
      bifamily validate recipes/bigbigan.toml --set data.root=/data/imagenet
    """
    from bifamily.session import prepare

    resolved = _load(recipe, overrides)
    prepared = prepare(resolved)
    click.echo(f"{recipe}: ok")
    for kind in KINDS:
        click.echo(f"  {kind:<14} {resolved.kinds[kind]}")
    click.echo("parameters:")
    for name, count in prepared.model.parameter_counts().items():
        click.echo(f"  {name:<18} {count:>14,}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins, their distributions and the components they register."""
    plugin_set = _plugins(strict=False)
    rows = []
    for info in plugin_set.infos:
        components = {
            kind: [e.name for e in plugin_set.registry.entries(kind) if e.plugin == info.name] for kind in KINDS
        }
        rows.append(
            {
                "plugin": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "status": "failed" if info.error else "ok",
                "error": info.error,
                "components": {k: v for k, v in components.items() if v},
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        status = "" if row["status"] == "ok" else f"  FAILED: {row['error']}"
        click.echo(f"{row['plugin']}  ({row['distribution']} {row['version']}){status}")
        for kind, names in row["components"].items():
            click.echo(f"    {kind:<14} {', '.join(names)}")


if __name__ == "__main__":  # pragma: no cover
    main()
