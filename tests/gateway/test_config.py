"""Settings: command line over environment over defaults, bad values refused early."""

from __future__ import annotations

import argparse
import os

import pytest

from gateway import cli
from gateway.config import _OPTIONS, GROUPS, Settings, add_arguments, build, environment


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


def test_every_option_says_what_it_does_its_default_and_environment() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    titles = {group.title for group in parser._action_groups}
    assert set(GROUPS) <= titles
    grouped = {
        action.dest: group.title
        for group in parser._action_groups
        for action in group._group_actions
        if group.title in GROUPS
    }
    assert grouped.keys() == _OPTIONS.keys()  # every option in one of the groups
    for action in parser._actions:
        if action.dest not in _OPTIONS:
            continue
        option = _OPTIONS[action.dest]
        assert grouped[action.dest] == option.group
        text = action.help or ""
        assert len(text.split(" (default: ")[0]) > 10, action.dest  # says what it does
        assert "(default: " in text, action.dest
        assert all(variable in text for variable in option.env), action.dest


def test_serve_help_shows_groups_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(["serve", "--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for group in GROUPS:
        assert f"{group}: {GROUPS[group]}" in text
    assert "--port PORT listen port (default: 8080; env: CANOPY_PORT, SERVER_PORT)" in text
    assert "(default: 25% of physical memory; env: CANOPY_MAX_HOT_BYTES)" in text


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--auth", "jwt"], "--auth jwt needs a key"),
        (["--auth", "jwt", "--jwt-secret", "short"], "at least 32 bytes"),
        (["--accounts"], "--accounts issues JWTs: it needs --auth jwt"),
        (["--auth", "jwt", "--jwt-public-key", "/nonexistent.pem"], "jwt keys:"),
        (["--auth", "jwt,none", "--jwt-secret", "x" * 32], "it would turn them off"),
    ],
)
def test_jwt_settings_are_checked_at_start(argv: list[str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse(*argv)


def test_jwt_settings_from_the_environment() -> None:
    settings = parse(CANOPY_AUTH="jwt", CANOPY_JWT_SECRET="x" * 32, CANOPY_ACCOUNTS="1",
                     CANOPY_JWT_TTL_SECONDS="600")  # fmt: skip
    assert settings.accounts and settings.jwt_ttl_seconds == 600


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ((), "it needs --journal redis"),  # the file journal keeps its in-process flusher
        (("--journal", "redis", "--cache", "off"), "nothing to write behind with --cache off"),
        (("--journal", "redis", "--durability", "store"), "--durability store writes in the"),
    ],
)
def test_flusher_process_is_refused_where_it_has_nothing_to_do(
    argv: tuple[str, ...], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse("--flusher-process", *argv)
    assert parse("--flusher-process", "--journal", "redis").flusher_in_child()


CASSANDRA_REDIS = ("--store", "scylla", "--journal", "redis")


@pytest.mark.parametrize(
    ("argv", "in_child"),
    [
        (CASSANDRA_REDIS, True),  # measured better there (docs/decisions.md)
        ((), False),  # embedded: SQLite and the file journal
        (("--journal", "redis"), False),  # SQLite
        ((*CASSANDRA_REDIS, "--flusher-process", "off"), False),
        ((*CASSANDRA_REDIS, "--cache", "off"), False),
        ((*CASSANDRA_REDIS, "--durability", "store"), False),
        ((*CASSANDRA_REDIS, "--cluster", "redis"), True),  # each member's own child
        ((*CASSANDRA_REDIS, "--workers", "2"), False),
        ((*CASSANDRA_REDIS, "--workers", "2", "--cluster", "redis"), True),  # one a worker
        (("--journal", "redis", "--flusher-process"), True),  # a bare flag: on
        (("--journal", "redis", "--flusher-process", "on"), True),
    ],
)
def test_the_write_behind_runs_in_a_child_by_default_where_it_can(
    argv: tuple[str, ...], in_child: bool
) -> None:
    settings = parse(*argv)
    assert settings.flusher_in_child() is in_child
    assert parse(**environment(settings)).flusher_in_child() is in_child


def test_the_flusher_process_switch_reads_bool_words_and_a_bounded_nice() -> None:
    assert parse(CANOPY_FLUSHER_PROCESS="1", CANOPY_JOURNAL="redis").flusher_process == "on"
    assert parse(*CASSANDRA_REDIS, CANOPY_FLUSHER_PROCESS="no").flusher_in_child() is False
    assert parse(CANOPY_FLUSHER_PROCESS="Auto").flusher_process == "auto"
    with pytest.raises(ValueError, match="flusher_process: cannot read 'sometimes'"):
        parse(CANOPY_FLUSHER_PROCESS="sometimes")
    assert parse().flusher_nice == 10
    with pytest.raises(ValueError, match="flusher_nice must be 0 to 19"):
        parse("--flusher-nice", "20")


def test_flusher_command_needs_the_redis_journal(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["flusher"])
    assert exited.value.code == 2
    assert "canopy flusher writes a Redis journal behind" in capsys.readouterr().err


def test_settings_pass_to_a_child_process_whole() -> None:
    settings = parse("--flusher-process", "--journal", "redis", "--port", "9123",
                     "--max-unflushed-bytes", "77", "--allow-anonymous")  # fmt: skip
    assert parse(**environment(settings)) == settings


def test_cluster_settings_keep_the_heartbeat_deadline_under_the_lease() -> None:
    settings = parse("--cluster", "redis", "--port", "8081")
    assert (settings.lease_seconds, settings.heartbeat_deadline()) == (2.0, 1.5)
    assert settings.advertised() == "http://127.0.0.1:8081"
    from_env = parse(CANOPY_CLUSTER="redis", CANOPY_ADVERTISE_URL="http://a:1")
    assert from_env.cluster == "redis" and from_env.advertised() == "http://a:1"
    with pytest.raises(ValueError, match="must be shorter than --lease-seconds"):
        parse("--cluster", "redis", "--heartbeat-seconds", "1")
    with pytest.raises(ValueError, match="cluster must be one of"):
        parse(CANOPY_CLUSTER="zookeeper")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--redis-url", "redis://a:7001,redis://b:7001"], "add --redis-cluster"),
        (["--redis-url", "redis://a:7001/3", "--redis-cluster"], "only database 0"),
        (["--redis-url", "http://a:6379"], "expected redis://"),
        (["--redis-timeout", "0"], "must be positive"),
    ],
)
def test_redis_settings_are_checked_at_start(argv: list[str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse("--journal", "redis", *argv)


def test_a_redis_cluster_is_named_by_its_seed_nodes() -> None:
    settings = parse("--journal", "redis", "--redis-url", "redis://a:7001, redis://b:7002",
                     "--redis-cluster", "--redis-max-connections", "8")  # fmt: skip
    redis = settings.redis()
    assert (redis.cluster, redis.urls(), redis.max_connections) == (
        True, ["redis://a:7001", "redis://b:7002"], 8,
    )  # fmt: skip


def test_workers_default_to_one_and_auto_is_one_per_core() -> None:
    assert parse().worker_count() == 1
    assert parse("--workers", "auto").worker_count() == len(os.sched_getaffinity(0))
    assert parse(CANOPY_WORKERS="3").worker_count() == 3


ACCOUNTS = ("--auth", "jwt", "--accounts")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--workers", "0"], "positive number or auto"),
        (["--workers", "many"], "positive number or auto"),
        (["--workers", "2", "--cache", "off"], "needs the cache"),
        (["--workers", "2", *ACCOUNTS], "--accounts needs a shared store"),
        (["--workers", "2", "--journal", "redis", "--flusher-process"], "needs --cluster redis"),
        (["--workers", "2", "--cluster", "redis", "--advertise-url", "http://a:1"],
         "each advertises its own peer port"),
    ],
)  # fmt: skip
def test_workers_are_refused_where_they_cannot_serve(argv: list[str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse(*argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--store", "scylla", "--journal", "redis"],
        ["--store", "scylla"],  # the journal sharded, the store shared
        ["--journal", "redis"],  # the store sharded, the journal shared
        ["--store", "scylla", *ACCOUNTS],  # accounts in the one store
    ],
)
def test_workers_share_a_shared_store_or_journal(argv: list[str]) -> None:
    assert parse("--workers", "2", *argv).worker_count() == 2
