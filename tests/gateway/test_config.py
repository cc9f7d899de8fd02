"""Settings: command line over environment over defaults, bad values refused early."""

from __future__ import annotations

import argparse

import pytest

from gateway.config import Settings, add_arguments, build


def parse(*argv: str, **environ: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build(parser.parse_args(argv), environ)


def test_defaults_serve_with_the_cache_on() -> None:
    settings = parse()
    assert settings.cache == "on" and settings.durability == "journal"


def test_command_line_wins_over_environment() -> None:
    assert parse("--cache", "off", CANOPY_CACHE="on").cache == "off"
    assert parse(CANOPY_CACHE="off").cache == "off"
    assert parse(SERVER_PORT="9000").port == 9000


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({"CANOPY_CACHE": "sometimes"}, "cache must be one of on, off"),
        ({"CANOPY_DURABILITY": "eventually"}, "durability must be one of"),
        ({"CANOPY_STORE": "mongo"}, "store must be one of sqlite, scylla"),
        ({"CANOPY_PORT": "eighty"}, "port: cannot read 'eighty' as int"),
        ({"CANOPY_RATE_LIMIT": "lots"}, "rate_limit: expected N/s"),
        ({"CANOPY_CORS_ORIGINS": "https://app.example/"}, "cors_origins: .* is not an origin"),
    ],
)
def test_bad_environment_values_are_refused(environ: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse(**environ)
