"""Issue 9 #16 and #17: a worker's key files are read at config load; keygen keeps an existing pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from actorsched import cli, security
from actorsched.errors import ConfigError
from actorsched.worker import app


def _load(*argv: str) -> object:
    return app.load_config(app.build_parser().parse_args(list(argv)))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    security.generate(tmp_path, "server")
    security.generate(tmp_path, "worker")
    return tmp_path


def test_a_worker_given_a_missing_key_file_fails_at_config_load_naming_it_and_the_fix(keys: Path) -> None:
    missing = keys / "nobody.key_secret"
    with pytest.raises(ConfigError) as caught:
        _load("--server-key", str(keys / "server.key"), "--key", str(missing))
    assert str(missing) in str(caught.value) and "--key" in str(caught.value)
    assert "actorsched keygen" in str(caught.value)


def test_a_worker_given_a_public_key_for_its_secret_fails_at_config_load(keys: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load("--server-key", str(keys / "server.key"), "--key", str(keys / "worker.key"))
    assert str(keys / "worker.key") in str(caught.value) and "key_secret" in str(caught.value)


def test_a_worker_given_a_missing_server_key_fails_at_config_load(keys: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load("--server-key", str(keys / "nobody.key"), "--key", str(keys / "worker.key_secret"))
    assert str(keys / "nobody.key") in str(caught.value) and "--server-key" in str(caught.value)


def test_a_worker_given_good_key_files_loads(keys: Path) -> None:
    _load("--server-key", str(keys / "server.key"), "--key", str(keys / "worker.key_secret"))


def test_keygen_refuses_to_replace_an_existing_pair_without_force(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keygen", str(tmp_path), "coordinator"]) == cli.EXIT_OK
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    capsys.readouterr()

    assert cli.main(["keygen", str(tmp_path), "coordinator"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "coordinator.key" in err and "--force" in err
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before

    assert cli.main(["keygen", str(tmp_path), "coordinator", "--force"]) == cli.EXIT_OK
    assert (tmp_path / "coordinator.key").read_bytes() != before["coordinator.key"]


def test_keygen_refuses_when_only_half_a_pair_exists(tmp_path: Path) -> None:
    (tmp_path / "w.key_secret").write_text("kept\n")
    assert cli.main(["keygen", str(tmp_path), "w"]) == cli.EXIT_ERROR
    assert (tmp_path / "w.key_secret").read_text() == "kept\n" and not (tmp_path / "w.key").exists()
