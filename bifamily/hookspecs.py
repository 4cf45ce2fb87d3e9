"""Every hook a bifamily plugin can implement.

A plugin is an importable module (or object) with functions decorated by ``bifamily.hookspecs.hookimpl`` and
named after the specs below. Each registration hook receives a ``register(name, config_cls)`` callback;
``config_cls`` is a frozen attrs class whose fields are the recipe keys of that component (declared
with :func:`bifamily.config.option`) and whose ``build(ctx)`` method returns the built object. A recipe
selects a model component with ``kind = "name"`` in the matching section, and evaluation plugins by
name (``[eval] metrics = "probe,knn"``, with optional settings in ``[metrics.NAME]`` and
``[feature_networks.NAME]``). Names are global per kind: registering a name twice is an error that
names both plugins.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("bifamily")
hookimpl = pluggy.HookimplMarker("bifamily")

Register = Callable[[str, type], None]


@hookspec
def bifamily_register_priors(register: Register) -> None:
    """Register latent priors (recipe section ``[prior]``).

    ``config_cls.build(ctx)`` returns a :class:`bifamily.interfaces.LatentPrior`. The config must have
    an int field ``dim``: the prior owns the latent dimension every other component is built with.
    """


@hookspec
def bifamily_register_generators(register: Register) -> None:
    """Register generators (recipe section ``[generator]``).

    ``config_cls.build(ctx)`` returns a :class:`bifamily.interfaces.Generator` producing
    ``ctx.channels`` x ``ctx.resolution`` x ``ctx.resolution`` images from ``ctx.latent_dim`` latents.
    """


@hookspec
def bifamily_register_encoders(register: Register) -> None:
    """Register encoder backbones (recipe section ``[encoder]``).

    ``config_cls.build(ctx)`` returns a :class:`bifamily.interfaces.EncoderBackbone` reading images of
    side ``ctx.encoder_input_resolution``. The posterior head is chosen separately (``[posterior]``).
    """


@hookspec
def bifamily_register_posteriors(register: Register) -> None:
    """Register posterior heads (recipe section ``[posterior]``).

    ``config_cls.build(ctx, feature_dim)`` returns a :class:`bifamily.interfaces.PosteriorHead` mapping
    backbone features of width ``feature_dim`` to a posterior over ``ctx.latent_dim`` latents.
    """


@hookspec
def bifamily_register_discriminators(register: Register) -> None:
    """Register joint discriminators (recipe section ``[discriminator]``).

    ``config_cls.build(ctx)`` returns a :class:`bifamily.interfaces.JointDiscriminator` scoring
    (image, latent) pairs.
    """


@hookspec
def bifamily_register_losses(register: Register) -> None:
    """Register adversarial objectives (recipe section ``[loss]``).

    ``config_cls.build(ctx)`` returns a :class:`bifamily.interfaces.Loss`.
    """


@hookspec
def bifamily_register_datasets(register: Register) -> None:
    """Register data sets (recipe section ``[data]``).

    The config must have int fields ``resolution`` and ``channels``, which every model component is
    built with. ``config_cls.build(ctx, split)`` returns a
    :class:`bifamily.interfaces.LabelledDataset` for ``split`` in ``{"train", "test"}``: "train" feeds
    training, "test" is held out for evaluation. Images come at ``ctx.data_resolution``
    (the larger of the G/D and E resolutions); the trainer resizes them for each module.
    """


@hookspec
def bifamily_register_metrics(register: Register) -> None:
    """Register evaluation metrics (chosen by name in ``[eval] metrics``; settings in ``[metrics.NAME]``).

    ``config_cls.build(ctx)`` receives a :class:`bifamily.metric_interfaces.MetricContext` and returns a
    :class:`bifamily.metric_interfaces.Metric`: ``directions`` (value name -> "max" or "min", the
    values a run may keep its best checkpoint by), ``needs_labels``, and ``compute(subject)`` returning
    a :class:`bifamily.metric_interfaces.MetricResult` (values, the settings that make them
    comparable, optional image grids, and optional details: results that are not single numbers, such
    as a class histogram, written to the record but never plotted or compared), and optionally
    ``report_line(values, initial)``, its line in the end-of-run report. The config class docstring
    is the metric's documented protocol.
    """


@hookspec
def bifamily_register_feature_networks(register: Register) -> None:
    """Register frozen feature networks for IS/FID/KID-style metrics (settings in ``[feature_networks.NAME]``).

    ``config_cls.build(ctx)`` receives a :class:`bifamily.context.BuildContext` (``channels`` and
    ``resolution`` of the images it will see) and returns a
    :class:`bifamily.evaluation.feature_networks.FeatureNetwork`. Raise a
    :class:`bifamily.errors.BifamilyError` naming the missing file when weights are absent: nothing
    may be downloaded.
    """
