"""Contract tests for bifamily plugins: call these from your plugin's pytest tests.

    from bifamily.testing import check_generator, check_plugin
    import my_plugin

    def test_plugin_loads_and_registers():
        assert check_plugin(my_plugin) == {"generator": {"mygen": MyGeneratorConfig}}

    def test_generator_contract():
        check_generator(MyGeneratorConfig(width=8))

Each check builds the component from its config as ``bifamily run`` does and raises ``AssertionError``
naming the contract it breaks. :mod:`bifamily.testing.strategies` has hypothesis strategies for
latents, images and scores. Needs the test extra (``pip install "bifamily[test]"``: pytest, hypothesis).
"""

from bifamily.testing.building import SMALL_CONTEXT, component_config, plugin_set
from bifamily.testing.contracts import (
    check_config_class,
    check_discriminator,
    check_encoder,
    check_generator,
    check_plugin,
    check_prior,
)
from bifamily.testing.losses import check_loss, check_loss_on

__all__ = [
    "SMALL_CONTEXT",
    "check_config_class",
    "check_discriminator",
    "check_encoder",
    "check_generator",
    "check_loss",
    "check_loss_on",
    "check_plugin",
    "check_prior",
    "component_config",
    "plugin_set",
]
