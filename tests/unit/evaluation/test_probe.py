import torch

from bifamily.evaluation.probe import bn_crelu, fit_linear_classifier, linear_probe, trainval_split

NUM_CLASSES = 10


def separable(n, seed, dim=16):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    features = 3.0 * torch.eye(dim)[labels] + 0.3 * torch.randn(n, dim, generator=generator) + 5.0
    return features, labels


def test_linearly_separable_features_reach_100_percent():
    result = linear_probe(*separable(500, 0), *separable(200, 1), num_classes=NUM_CLASSES, steps=100)
    assert result.top1 == 1.0 and result.top5 == 1.0 and result.trainval_top1 == 1.0
    assert 1 <= result.steps_run <= 100


def test_bn_crelu_probe_also_separates():
    result = linear_probe(
        *separable(500, 0), *separable(200, 1), num_classes=NUM_CLASSES, steps=100, feature_transform="bn_crelu"
    )
    assert result.top1 == 1.0


def test_random_labels_stay_near_chance():
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(500, 32, generator=generator), torch.randn(500, 32, generator=generator)
    train_y = torch.randint(NUM_CLASSES, (500,), generator=generator)
    test_y = torch.randint(NUM_CLASSES, (500,), generator=generator)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=NUM_CLASSES, steps=100)
    assert result.top1 < 1 / NUM_CLASSES + 0.1


def test_classifier_starts_at_zero_so_predictions_start_uniform():
    x, y = separable(200, 0)
    fit = fit_linear_classifier(
        x, y, x, y, num_classes=NUM_CLASSES, lr=0.0, steps=5, batch_size=64, ema_decay=0.9999, eval_every=1, seed=0
    )
    probabilities = fit.classifier.logits(x).softmax(dim=1)
    torch.testing.assert_close(probabilities, torch.full_like(probabilities, 1 / NUM_CLASSES))


def test_learning_rate_sweep_selects_on_trainval_and_is_deterministic():
    train, test = separable(300, 0), separable(100, 1)
    result = linear_probe(*train, *test, num_classes=NUM_CLASSES, steps=50, lrs=(0.0, 0.01))
    assert result.lr == 0.01 and result.top1 == 1.0
    assert linear_probe(*train, *test, num_classes=NUM_CLASSES, steps=50, lrs=(0.0, 0.01)) == result


def test_features_made_and_probed_under_inference_mode_are_accepted():
    with torch.inference_mode():
        train, test = separable(300, 0), separable(100, 1)
        inside = linear_probe(*train, *test, num_classes=NUM_CLASSES, steps=50, feature_transform="bn_crelu")
    assert inside.top1 == 1.0
    assert linear_probe(*train, *test, num_classes=NUM_CLASSES, steps=50).top1 == 1.0


def test_bn_crelu_doubles_width_and_standardises_with_reference_statistics():
    reference = torch.randn(500, 8) * 3 + 2
    transform = bn_crelu(reference)
    out = transform(reference)
    assert out.shape == (500, 16)
    standardised = out[:, :8] - out[:, 8:]
    torch.testing.assert_close(standardised.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardised.std(0, unbiased=False), torch.ones(8), atol=1e-4, rtol=0)
    assert (out >= 0).all()


def test_trainval_split_is_a_deterministic_partition():
    fit, val = trainval_split(100, 0.1, seed=3)
    assert len(val) == 10 and sorted(torch.cat([fit, val]).tolist()) == list(range(100))
    assert torch.equal(val, trainval_split(100, 0.1, seed=3)[1])


def test_early_stopping_keeps_the_best_trainval_step_not_the_last():
    """Feature a predicts the fit labels 90% of the time and the trainval labels always; feature b
    predicts the fit labels always but the trainval labels never, at a fifth of the scale. Adam fits
    a first (trainval 100%), then b takes over to fit the last 10% (trainval falls to 0%)."""
    labels = torch.arange(400) % 2
    sign = (2 * labels - 1).float()
    agree = torch.where(torch.arange(400) % 10 < 9, 1.0, -1.0)
    fit_x = torch.stack([sign * agree, 0.2 * sign], dim=1)
    val_x = torch.stack([sign, -0.2 * sign], dim=1)

    def fit(eval_every):
        return fit_linear_classifier(
            fit_x, labels, val_x, labels, num_classes=2, lr=0.05, steps=2000, batch_size=400,
            ema_decay=0.0, eval_every=eval_every, seed=0,
        )

    assert fit(eval_every=2000).trainval_top1 == 0.0  # the last step alone
    early = fit(eval_every=20)
    assert early.trainval_top1 == 1.0 and early.step < 200
