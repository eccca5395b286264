"""The example plugin checks itself with ser-plugins' contract checker: one call per plugin."""
from ser_plugins.testing import check_aggregator, check_upstream


def test_frame_energy_keeps_the_upstream_contract():
    check_upstream("frame_energy")          # by its registered name, as a recipe names it
    check_upstream("frame_energy", bands=2)  # with options


def test_max_pool_keeps_the_aggregator_contract():
    check_aggregator("max_pool")
