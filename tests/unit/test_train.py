"""One training iteration (``Trainer.train_step``) and the EMA update it ends with."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from bifamily.ema import EMA
from bifamily.plugins import load_plugins
from bifamily.recipe import load
from bifamily.session import make_trainer, prepare
from bifamily.step_modules import GeneratorEncoder, ScorePairs

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml"
TINY = [
    "train.batch_size=4", "train.d_steps=2", 'train.updates="alternating"', "prior.dim=16", "generator.ch=4", "encoder.ch=4",
    "discriminator.ch=4", "discriminator.z_width=16", "discriminator.joint_width=16",
    'posterior.kind="gaussian"',  # a sampled posterior: the steps' posterior noise is covered too
]


def test_a_step_is_d_steps_discriminator_updates_then_one_generator_encoder_update(tmp_path):
    recipe = load(QUICKSTART, load_plugins(), TINY)
    prepared = prepare(recipe)
    trainer = make_trainer(prepared, tmp_path, progress=False)
    state = trainer.state
    d_stats, ge_stats = trainer.train_step()
    assert state.step == 1
    assert {float(s["step"]) for s in state.opt_d.state.values()} == {2.0}
    assert {float(s["step"]) for s in state.opt_ge.state.values()} == {1.0}
    assert all(torch.isfinite(v).all() for v in [*d_stats.values(), *ge_stats.values()])
    assert not any(tmp_path.iterdir())  # a step writes nothing: logging and checkpoints are the tick's


def test_a_simultaneous_step_takes_each_gradient_from_one_forward_pass_of_the_same_batch(tmp_path):
    """D's gradient is that of D's loss alone, G and E's that of their loss alone, both at the weights
    before the step (D not yet updated), from one batch; each optimizer steps once."""
    fp32 = 'train.precision="fp32"'  # the reference gradients below are computed without autocast
    recipe = load(QUICKSTART, load_plugins(), [*TINY, "train.d_steps=1", 'train.updates="simultaneous"', fp32])
    prepared = prepare(recipe)
    trainer = make_trainer(prepared, tmp_path, progress=False)
    model = prepared.model
    batches = []
    next_batch = trainer._next_batch
    trainer._next_batch = lambda: batches.append(next_batch()) or batches[-1]
    before = copy.deepcopy(model)
    generator_calls = []
    model.generator.register_forward_hook(lambda *_: generator_calls.append(1))

    trainer.train_step()

    assert len(batches) == 1 and len(generator_calls) == 2  # G(z) and G(E(x)) for the cycle term, once each
    assert {float(s["step"]) for s in trainer.state.opt_d.state.values()} == {1.0}
    assert {float(s["step"]) for s in trainer.state.opt_ge.state.values()} == {1.0}
    ((x, x_e, z, noise),) = batches[0]
    x_fake, z_hat, x_rec = GeneratorEncoder(before.generator, before.encoder)(z, x_e, noise, True)
    real, fake = ScorePairs(before.discriminator)(x, z_hat, x_fake, z)
    d_loss, _ = before.loss.discriminator(real, fake)
    ge_loss = before.loss.generator_encoder(real, fake)[0] + before.loss.reconstruction(x, x_rec)[0]
    d_params = list(before.discriminator.parameters())
    ge_params = [*before.generator.parameters(), *before.encoder.parameters()]
    expected = [
        *torch.autograd.grad(d_loss, d_params, retain_graph=True),
        *torch.autograd.grad(ge_loss, ge_params),
    ]
    got = [p.grad for p in [*model.discriminator.parameters(), *model.generator.parameters(), *model.encoder.parameters()]]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_a_discriminator_with_batch_statistics_scores_real_and_fake_pairs_in_separate_calls(tmp_path):
    def d_batch_sizes(minibatch_std: int) -> list[int]:
        recipe = load(QUICKSTART, load_plugins(), [*TINY, f"discriminator.minibatch_std={minibatch_std}"])
        prepared = prepare(recipe)
        trainer = make_trainer(prepared, tmp_path / str(minibatch_std), progress=False)
        sizes = []
        prepared.model.discriminator.register_forward_hook(lambda _, inputs, __: sizes.append(len(inputs[0])))
        d_stats, ge_stats = trainer.train_step()
        assert all(torch.isfinite(v).all() for v in [*d_stats.values(), *ge_stats.values()])
        return sizes

    # Two D updates and one G+E update at batch 4: one call on 8 pairs each, or two calls on 4.
    assert d_batch_sizes(0) == [8, 8, 8]
    assert d_batch_sizes(4) == [4] * 6


def test_ema_update_averages_weights_and_copies_buffers():
    torch.manual_seed(0)
    live = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(live)
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    live(torch.randn(8, 3))  # training-mode forward: moves the running statistics
    ema.update(live, decay=0.75)
    for averaged, old, current in zip(ema.module.parameters(), before, live.parameters()):
        torch.testing.assert_close(averaged, 0.75 * old + 0.25 * current.detach())
    for mine, theirs in zip(ema.module.buffers(), live.buffers()):
        assert torch.equal(mine, theirs)
    assert int(ema.module[1].num_batches_tracked) == 1


def test_ema_of_a_module_without_buffers():
    live = nn.Linear(2, 2)
    ema = EMA(live)
    with torch.no_grad():
        live.weight.fill_(1.0)
    ema.update(live, decay=0.0)  # 0: copy
    assert torch.equal(ema.module.weight, live.weight.detach())


def generator_calls_in_one_ge_update(tmp_path: Path, overrides: list[str]) -> tuple[int, dict[str, torch.Tensor]]:
    recipe = load(QUICKSTART, load_plugins(), [*TINY, *overrides])
    prepared = prepare(recipe)
    trainer = make_trainer(prepared, tmp_path, progress=False)
    calls = []
    prepared.model.generator.register_forward_hook(lambda *_: calls.append(1))
    stats = trainer.ge_step()
    return len(calls), stats


def test_the_generator_decodes_real_latents_only_when_the_loss_has_a_cycle_term(tmp_path):
    calls, stats = generator_calls_in_one_ge_update(tmp_path / "plain", ["loss.cycle=0.0"])
    assert calls == 1 and "cycle_l1" not in stats
    calls, stats = generator_calls_in_one_ge_update(tmp_path / "cycle", ["loss.cycle=5.0"])
    assert calls == 2 and 0 < float(stats["cycle_l1"]) <= 2  # L1 between images in [-1, 1]


def reconstruction_errors(tmp_path: Path, cycle: float, steps: int) -> list[float]:
    overrides = [*TINY, "train.batch_size=16", "generator.ch=8", "encoder.ch=8", f"loss.cycle={cycle}", "run.seed=3"]
    recipe = load(QUICKSTART, load_plugins(), overrides)
    prepared = prepare(recipe)
    trainer = make_trainer(prepared, tmp_path, progress=False)
    return [float(trainer.train_step()[1]["cycle_l1"]) for _ in range(steps)]


def test_a_strong_cycle_term_teaches_g_and_e_to_reconstruct(tmp_path):
    """A weight of 1e-6 only measures |G(E(x)) - x|; a weight of 50 makes it the objective."""
    measured = reconstruction_errors(tmp_path / "measured", 1e-6, 30)
    trained = reconstruction_errors(tmp_path / "trained", 50.0, 30)
    assert measured[0] == trained[0]  # the same start
    assert sum(trained[-5:]) < 0.9 * sum(measured[-5:]), (trained, measured)  # 0.80 measured
