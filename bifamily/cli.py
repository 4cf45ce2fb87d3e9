"""The ``bifamily`` command line.

Conventions: ``-h``/``--help`` on every command, each with examples; ``--version``; shell completion
(``bifamily completion SHELL``); no colour under ``NO_COLOR`` or off a terminal; progress as plain
lines where stderr is not a terminal; the exit codes of :data:`EXIT_CODES`, listed in ``bifamily --help``.
"""

from __future__ import annotations

import json
import shlex
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click
import tomli_w

from bifamily import __version__
from bifamily.console import echo, label, showing_run_log
from bifamily.errors import BifamilyError, RecipeError
from bifamily.plugins import KINDS, REGISTERED_KINDS, PluginSet, default_plugins
from bifamily.recipe import Recipe, load
from bifamily.scaffold import new_plugin
from bifamily.stopping import EXIT_DIVERGED, TrainingStopped, signal_name

if TYPE_CHECKING:
    from bifamily.distributed import World

EXIT_BAD_INPUT = 2
EXIT_CODES = f"""\b
Exit codes:
  0        success
  1        internal error (a bug: the traceback is printed)
  {EXIT_BAD_INPUT}        bad input: recipe, --set override, plugin, data, checkpoint or command line;
           one line per problem, naming the key or file, no traceback
  {EXIT_DIVERGED}        training diverged: a loss or gradient was not finite ([guard] in the recipe)
  128+N    stopped by signal N after writing a checkpoint: 130 SIGINT (Ctrl-C), 143 SIGTERM;
           continue with --resume (docs/reliability.md)
"""


def _printable(text: str, *, newlines: bool = True) -> str:
    """``text`` with control characters escaped (newlines too unless ``newlines``): a hostile recipe key
    must not move the cursor, clear the terminal or split one problem over several lines."""
    return "".join(
        char if (newlines and char == "\n") or unicodedata.category(char) not in ("Cc", "Zl", "Zp") else repr(char)[1:-1]
        for char in text
    )


def _fail(exc: BifamilyError) -> None:
    one_line_each = isinstance(exc, RecipeError)  # other errors may list details on further lines
    for line in exc.lines():
        _error(_printable(line, newlines=not one_line_each))
    sys.exit(EXIT_BAD_INPUT)


def _error(text: str) -> None:
    echo(f"{label('error:', 'red')} {text}", err=True)


def _stopped(text: str) -> None:
    echo(f"{label('stopped:', 'yellow')} {text}", err=True)


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BifamilyError as exc:
            _fail(exc)
        except TrainingStopped as stop:
            if stop.main_rank:
                for line in stop.lines():
                    _stopped(_printable(line))
            sys.exit(stop.exit_code)
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (which stops cleanly itself)
            _stopped("interrupted")
            sys.exit(130)

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="bifamily")
def main() -> None:
    """bifamily: BiGAN, ALI and BigBiGAN from declarative TOML recipes.

    \b
    Examples:
      bifamily run recipes/quickstart.toml
      bifamily run recipes/bigan.toml --set run.steps=200 --out runs/try
      bifamily validate recipes/ali.toml
      bifamily eval runs/00000-quickstart --metrics probe,knn
      bifamily sample runs/00000-quickstart -n 64 -o samples.png
      bifamily export runs/00000-quickstart -o encoder.pt2
      bifamily plot runs/00000-quickstart
      bifamily plugins

    \b
    Shell completion (commands, options, choices, file names):
      eval "$(bifamily completion bash)"     # in ~/.bashrc; zsh: the same with zsh, in ~/.zshrc
      bifamily completion fish > ~/.config/fish/completions/bifamily.fish

    Output: a run prints a progress bar on a terminal and a plain progress line every run.log_every
    steps elsewhere (both also go to RUN_DIR/log.txt); no colour when NO_COLOR is set or the output
    is not a terminal.
    """


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: RUN.out_root/NNNNN-NAME).")
@click.option("--resume", is_flag=True, help="Continue the run in --out (or the latest run of this recipe) from its latest checkpoint.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Make every check the run would make before it starts (bifamily validate's), print the resolved "
    "recipe and exit.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar (default: on when stderr is a terminal); without it, a plain progress line every "
    "run.log_every steps.",
)
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
    """Train the model a RECIPE describes. Everything it prints also goes to RUN_DIR/log.txt.

    \b
    Examples:
      bifamily run recipes/quickstart.toml
      bifamily run recipes/bigan.toml --set optim.d_lr=2e-4 --set run.steps=200 --out runs/bigan
      bifamily run recipes/bigan.toml --out runs/bigan --resume
      bifamily run recipes/bigbigan.toml --nproc 8
      torchrun --nproc-per-node=8 -m bifamily run recipes/bigbigan.toml
    """
    from bifamily import distributed
    from bifamily.preflight import preflight
    from bifamily.session import choose_run_dir, run_checked

    resolved = _load(recipe, overrides)
    world = _world(resolved, nproc)
    checked = preflight(resolved, world)
    if dry_run:
        if out is not None or resume:
            choose_run_dir(resolved, out, resume)  # the run's refusals of --out and --resume; creates nothing
        click.echo(tomli_w.dumps(resolved.to_dict()), nl=False)
        return
    show_progress = sys.stderr.isatty() if progress is None else progress
    if nproc is not None and nproc > 1:
        _launch(resolved, recipe, overrides, out, resume, show_progress, nproc)
        return
    with showing_run_log(bar=show_progress), distributed.joined(world, resolved.train.collective_timeout_s):
        run_checked(checked, out, resume=resume, progress=show_progress)


def _world(resolved: Recipe, nproc: int | None) -> World:
    """The world to check ``resolved`` for: with ``--nproc N``, that of its last rank (the one that
    needs the most GPUs); else this process's, alone or as torchrun started it."""
    from bifamily import distributed

    if nproc is None or nproc == 1:
        return distributed.world_from_environment(resolved.run.device)
    if distributed.launched_by_torchrun():
        raise BifamilyError("--nproc: this process was started by torchrun already; drop --nproc")
    device = distributed.resolve_device(resolved.run.device, local_rank=nproc - 1, world_size=nproc)
    return distributed.World(size=nproc, local_rank=nproc - 1, device=device)


def _launch(
    resolved: Recipe,
    recipe: str,
    overrides: tuple[str, ...],
    out: str | None,
    resume: bool,
    progress: bool,
    nproc: int,
) -> None:
    """``run --nproc N`` after the pre-flight: choose the run directory, hand over to torchrun."""
    from bifamily import distributed
    from bifamily.rundir import RunDir
    from bifamily.session import choose_run_dir

    run_dir = choose_run_dir(resolved, out, resume)
    command = ["run", recipe, *(arg for o in overrides for arg in ("--set", o)), "--out", str(run_dir)]
    arguments = [*command, "--progress" if progress else "--no-progress", *(["--resume"] if resume else [])]
    from torch.distributed.elastic.multiprocessing.api import SignalException

    again = shlex.join(["bifamily", *command, "--resume", "--nproc", str(nproc)])
    try:
        distributed.launch(nproc, arguments)
    except distributed.RankFailed as exc:
        if exc.exitcode <= 128 and exc.exitcode != EXIT_DIVERGED:  # else rank 0 said why it stopped
            _error(str(exc))
        if RunDir(run_dir).pointer.exists():
            _error(f"continue from the last checkpoint: {again}")
        sys.exit(exc.exitcode if exc.exitcode > 0 else 1)
    except SignalException as exc:  # sent to this process: torchrun passed it on to the ranks and waited
        _stopped(f"{signal_name(exc.sigval)}; continue with: {again}")
        sys.exit(128 + int(exc.sigval))


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@_guarded
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Make every check a run of RECIPE makes before it starts, cheapest first, and report every
    problem at once: keys and types, plugin names, device and batch split, data paths, evaluation
    settings, then the model built on the meta device (no memory, no initial values) with a batch
    through G, E and D. On success print the components and their parameter counts.

    \b
    Example:
      bifamily validate recipes/bigbigan.toml --set data.root=/data/imagenet
    """
    from bifamily.preflight import preflight

    resolved = _load(recipe, overrides)
    checked = preflight(resolved)
    click.echo(f"{recipe}: ok")
    for kind in KINDS:
        click.echo(f"  {kind:<14} {resolved.kinds[kind]}")
    click.echo("parameters:")
    for name, count in checked.meta_model.parameter_counts().items():
        click.echo(f"  {name:<18} {count:>14,}")


device_option = click.option(
    "--device", default="auto", show_default=True, help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'."
)
snapshot_argument = click.argument("snapshot", metavar="SNAPSHOT", type=click.Path(exists=True))


def _snapshot(snapshot: str, overrides: tuple[str, ...], device: str) -> Any:
    from bifamily.distributed import resolve_device
    from bifamily.checkpoint.loading import load_snapshot

    return load_snapshot(snapshot, _plugins(), list(overrides), resolve_device(device, key="--device"))


@main.command("eval")
@snapshot_argument
@click.option("--metrics", metavar="NAMES", help="Comma-separated metrics (default: the recipe's eval.metrics).")
@set_option
@device_option
@_guarded
def eval_command(snapshot: str, metrics: str | None, overrides: tuple[str, ...], device: str) -> None:
    """Compute metrics on the EMA weights of SNAPSHOT: a snapshot file, a checkpoint folder,
    RUN_DIR/best, or a run directory (its latest checkpoint). Inside a run directory the results are
    appended to its metrics.jsonl (and grids saved under eval/).

    \b
    Examples:
      bifamily eval runs/00003-bigan --metrics probe,knn
      bifamily eval runs/00003-bigan/best --metrics fid --set 'feature_networks.inception.weights="inception-2015-12-05.pt"'
      bifamily eval snapshot.safetensors --set 'data={kind = "mnist", root = "../shared/data/mnist"}'
    """
    from bifamily.evaluation.metrics import build_metrics, check_labels, format_table, write_records
    from bifamily.evaluation.runner import Evaluator
    from bifamily.rundir import RunWriter
    from bifamily.preflight import open_data

    if metrics is not None:
        overrides = (*overrides, f"eval.metrics={json.dumps(metrics)}")
    loaded = _snapshot(snapshot, overrides, device)
    recipe, model = loaded.recipe, loaded.model
    names = recipe.eval.metric_names
    if not names:
        raise BifamilyError("no metrics to compute: name them with --metrics (e.g. --metrics probe,knn)")
    built = build_metrics(recipe, _plugins(), names, model.context)
    train_data, test_data = open_data(recipe, model.context)
    check_labels(built, train_data, test_data)
    evaluator = Evaluator(recipe, model.prior, model.context, train_data, test_data)
    records = evaluator.compute(built, model.generator, model.encoder, loaded.step)
    click.echo(format_table(records))
    if loaded.run_dir is not None:
        write_records(RunWriter(loaded.run_dir), records)
        click.echo(f"recorded in {loaded.run_dir / 'metrics.jsonl'}")


@main.command()
@snapshot_argument
@click.option("-n", "count", type=click.IntRange(min=1), default=64, show_default=True, help="Number of samples.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="PNG file of the sample grid.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the latents.")
@click.option("--nrow", type=click.IntRange(min=1), help="Images per row (default: a square grid).")
@set_option
@device_option
@_guarded
def sample(
    snapshot: str, count: int, out: str, seed: int, nrow: int | None, overrides: tuple[str, ...], device: str
) -> None:
    """Write a grid of EMA-generator samples from SNAPSHOT (a file, checkpoint folder or run directory).

    \b
    Example:
      bifamily sample runs/00003-bigan/checkpoints/step-00001500/snapshot.safetensors -n 64 -o grid.png
    """
    import math

    from bifamily.evaluation.images import generate, save_grid

    loaded = _snapshot(snapshot, overrides, device)
    model = loaded.model
    images = generate(
        model.generator, model.prior, count, seed=seed, batch_size=loaded.recipe.eval.batch_size,
        device=model.context.device,
    )
    click.echo(save_grid(Path(out), images, nrow or math.ceil(math.sqrt(count))))


@main.command()
@snapshot_argument
@click.option(
    "--images", "images_dir", type=click.Path(exists=True, file_okay=False),
    help="Folder of images to reconstruct (default: the recipe data set's held-out split).",
)
@click.option("-n", "count", type=click.IntRange(min=2), default=16, show_default=True, help="Images to reconstruct.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="PNG file: each input beside G(E(x)).")
@click.option(
    "--iterations", type=click.IntRange(min=0), default=0, show_default=True,
    help="Also write the iterated reconstruction R_0 .. R_k (one row per input) to OUT's name + '-iterated'.",
)
@set_option
@device_option
@_guarded
def reconstruct(
    snapshot: str, images_dir: str | None, count: int, out: str, iterations: int, overrides: tuple[str, ...], device: str
) -> None:
    """Reconstruct images through the EMA encoder and generator of SNAPSHOT, G(E(x)), and report the
    per-pixel error next to a random pairing of inputs and reconstructions.

    \b
    Examples:
      bifamily reconstruct runs/00003-bigan --images my_images/ -o recon.png
      bifamily reconstruct runs/00003-bigan -n 8 --iterations 10 -o recon.png
    """
    import torch

    from bifamily.evaluation import reconstruction as rec
    from bifamily.evaluation.images import load_images, save_grid
    from bifamily.preflight import open_data

    loaded = _snapshot(snapshot, overrides, device)
    model, ctx = loaded.model, loaded.model.context
    if images_dir is not None:
        x = load_images(Path(images_dir), ctx.channels, ctx.data_resolution, count)
    else:
        _, test_data = open_data(loaded.recipe, ctx)
        x = torch.stack([test_data[i][0] for i in range(min(count, len(test_data)))])
    x = x.to(ctx.device)
    recon = rec.reconstruct(model.generator, model.encoder, x, ctx)
    out_path = Path(out)
    click.echo(save_grid(out_path, *rec.side_by_side(x, recon)))
    if x.shape[0] >= 2:
        error = rec.reconstruction_error(x, recon, seed=loaded.recipe.run.seed)
        click.echo(
            f"per-pixel squared error of G(E(x)) to x: {error.error:.4f}; to a random other input: "
            f"{error.random_pairing_error:.4f} (ratio {error.ratio:.3f})"
        )
    if iterations:
        iterated = rec.iterated_reconstructions(model.generator, model.encoder, x, ctx, iterations)
        click.echo(save_grid(out_path.with_name(f"{out_path.stem}-iterated{out_path.suffix}"), *rec.strip(iterated)))


@main.command("export")
@snapshot_argument
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False),
    help="OUT.pt2 or OUT.safetensors: both files are written, side by side.",
)
@click.option(
    "--module", type=click.Choice(["encoder", "generator"]), default="encoder", show_default=True,
    help="The EMA encoder (images -> features) or the EMA generator (latents -> images).",
)
@click.option(
    "--latent", is_flag=True,
    help="Encoder: also output the posterior's point estimate as 'latent' (one more backbone pass per call).",
)
@set_option
@_guarded
def export_command(snapshot: str, out: str, module: str, latent: bool, overrides: tuple[str, ...]) -> None:
    """Export the EMA encoder or generator of SNAPSHOT for use without bifamily: OUT.pt2, a
    torch.export program (input resolution fixed, any batch size) checked against the module, and
    OUT.safetensors, its weights with the recipe in the metadata (docs/interop.md).

    \b
    Examples:
      bifamily export runs/00003-bigan -o encoder.pt2
      bifamily export runs/00003-bigan/best --latent -o encoder.pt2
      bifamily export runs/00003-bigan --module generator -o generator.pt2

    \b
    Then, with torch alone:
      encoder = torch.export.load("encoder.pt2").module()
      features = encoder(images)["features"]   # images: (N, C, R, R) in [-1, 1]
    """
    from bifamily.interop import export

    for written in export(snapshot, out, module, latent=latent, overrides=list(overrides), plugins=_plugins()):
        click.echo(written)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Folder of the PNGs (default: RUN_DIR/plots).")
@set_option
@_guarded
def plot(run_dir: str, out: str | None, overrides: tuple[str, ...]) -> None:
    """Plot RUN_DIR: loss curves (losses.png), metric curves (metrics.png) and the EMA encoder's
    first-layer filters from the latest snapshot (filters.png; skipped before the first checkpoint).

    \b
    Example:
      bifamily plot runs/00003-bigan
    """
    from bifamily.checkpoint.manager import CheckpointManager
    from bifamily.evaluation.plots import plot_run
    from bifamily.rundir import RunDir

    path = Path(run_dir)
    layout = RunDir(path)
    encoder = None
    if layout.is_run_dir() and CheckpointManager(layout.checkpoints).latest() is not None:
        encoder = _snapshot(run_dir, overrides, "cpu").model.encoder
    elif layout.is_run_dir():
        click.echo(f"{path}: no checkpoint yet, so no filters.png", err=True)
    def note(text: str) -> None:
        click.echo(f"{path}: {text}", err=True)

    for written in plot_run(path, Path(out) if out else layout.plots, encoder, note):
        click.echo(written)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guarded
def plugins(as_json: bool) -> None:
    """List installed plugins, their distributions and the components they register.

    \b
    Examples:
      bifamily plugins
      bifamily plugins --json
    """
    plugin_set = _plugins(strict=False)
    if plugin_set.unknown_blocked:
        echo(f"{label('warning:', 'yellow')} {_printable(plugin_set.unknown_blocked_line())}", err=True)
    rows = []
    for info in plugin_set.infos:
        components = {
            kind: [e.name for e in plugin_set.registry.entries(kind) if e.plugin == info.name]
            for kind in REGISTERED_KINDS
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
            click.echo(f"    {kind:<16} {', '.join(names)}")


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the script that makes SHELL complete bifamily's commands, options, choices and file
    names on TAB (click's shell completion; bash needs version 4.4 or later).

    \b
    Examples:
      eval "$(bifamily completion bash)"     # add to ~/.bashrc
      eval "$(bifamily completion zsh)"      # add to ~/.zshrc
      bifamily completion fish > ~/.config/fish/completions/bifamily.fish
    """
    from click.shell_completion import BashComplete, FishComplete, ZshComplete

    script_class = {"bash": BashComplete, "zsh": ZshComplete, "fish": FishComplete}[shell]
    click.echo(script_class(main, {}, "bifamily", "_BIFAMILY_COMPLETE").source())


main.add_command(new_plugin)

if __name__ == "__main__":  # pragma: no cover
    main()
