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
    ],
)
def test_bad_environment_values_are_refused(environ: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse(**environ)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--auth", "jwt"], "--auth jwt needs a key"),
        (["--auth", "jwt", "--jwt-secret", "short"], "at least 32 bytes"),
        (["--accounts"], "--accounts issues JWTs: it needs --auth jwt"),
        (["--auth", "jwt", "--jwt-public-key", "/nonexistent.pem"], "jwt keys:"),
    ],
)
def test_jwt_settings_are_checked_at_start(argv: list[str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse(*argv)


def test_jwt_settings_from_the_environment() -> None:
    settings = parse(CANOPY_AUTH="jwt", CANOPY_JWT_SECRET="x" * 32, CANOPY_ACCOUNTS="1",
                     CANOPY_JWT_TTL_SECONDS="600")  # fmt: skip
    assert settings.accounts and settings.jwt_ttl_seconds == 600
