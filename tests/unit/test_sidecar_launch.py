"""The launcher's sidecar: its command line, root, environment and token from the server's flags."""

from __future__ import annotations

import fcntl
import os
import stat
from types import SimpleNamespace
from pathlib import Path

import pytest

from thunderagent_sglang.engine import sidecar_process
from thunderagent_sglang.engine.sidecar_process import (SidecarStartError, server_url,
                                                        sidecar_command, sidecar_env, sidecar_root)


@pytest.mark.parametrize("argv, url", [
    ([], "http://127.0.0.1:30000"),
    (["--port", "31000"], "http://127.0.0.1:31000"),
    (["--host", "0.0.0.0", "--port=31001"], "http://127.0.0.1:31001"),
    (["--host", "10.1.2.3"], "http://10.1.2.3:30000"),
    (["--host=::", "--port", "8000"], "http://[::1]:8000"),
    (["--host", "fe80::1"], "http://[fe80::1]:30000"),
    (["--port", "1", "--port", "2"], "http://127.0.0.1:2"),
    (["--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"], "https://127.0.0.1:30000"),
])
def test_server_url_is_the_servers_host_and_port_with_wildcards_as_loopback(argv, url):
    assert server_url(argv) == url


def test_sidecar_root_is_per_server_port_under_the_cache_dir():
    assert sidecar_root(Path("/c"), ["--port", "31000"]) == Path("/c/sidecar/31000")
    assert sidecar_root(Path("/c"), []) == Path("/c/sidecar/30000")


def test_sidecar_command_binds_loopback_on_a_port_it_picks_and_sweeps_its_siblings():
    assert sidecar_command(Path("/c/sidecar/31000"), "http://127.0.0.1:31000", python="py") == [
        "py", "-m", "thunderagent_sglang.sidecar", "--host", "127.0.0.1", "--port", "0",
        "--root", "/c/sidecar/31000", "--sweep-dir", "/c/sidecar",
        "--server-url", "http://127.0.0.1:31000"]


def test_a_restarted_sidecar_gets_its_old_port_and_the_launchers_options():
    options = sidecar_process.sidecar_options(("/b1", "/b2"), True, 3600.0)
    assert options == ["--base-root", "/b1", "--base-root", "/b2", "--allow-network",
                       "--idle-ttl", "3600"]
    command = sidecar_command(Path("/c/sidecar/1"), "http://h:1", options, 4242, python="py")
    assert command[command.index("--port") + 1] == "4242" and command[-len(options):] == options
    assert sidecar_process.sidecar_options() == []


def test_the_sidecars_metrics_say_how_often_it_was_restarted():
    sidecar = sidecar_process.SidecarProcess(
        proc=SimpleNamespace(poll=lambda: None), url="http://127.0.0.1:1", token="t",
        token_file=None, log_path=Path("/l"), restarts=2, failed_starts=1)
    text = sidecar.metrics_text().decode()
    assert "thunderagent_sidecar_restarts_total 2\n" in text
    assert "thunderagent_sidecar_failed_starts_total 1\n" in text
    assert "thunderagent_sidecar_up 1\n" in text


def test_sidecar_env_carries_the_token_and_the_servers_api_key():
    env = sidecar_env({"PATH": "/bin", "THUNDERAGENT_SIDECAR_TOKEN": "old"}, "tok",
                      ["--api-key", "k1", "--port", "1"])
    assert env == {"PATH": "/bin", "THUNDERAGENT_SIDECAR_TOKEN": "tok",
                   "THUNDERAGENT_SERVER_API_KEY": "k1"}


def test_sidecar_env_without_api_key_sets_no_server_key():
    assert sidecar_env({}, "tok", []) == {"THUNDERAGENT_SIDECAR_TOKEN": "tok"}


def test_token_from_the_environment_writes_no_file(tmp_path):
    token, path = sidecar_process._token(tmp_path, {"THUNDERAGENT_SIDECAR_TOKEN": " given "})
    assert (token, path) == ("given", None)
    assert list(tmp_path.iterdir()) == []


def test_generated_token_is_written_readable_by_its_owner_only(tmp_path):
    token, path = sidecar_process._token(tmp_path, {})
    assert path == tmp_path / "token"
    assert path.read_text() == token + "\n"
    assert len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_describe_names_the_url_token_file_and_log(tmp_path):
    sidecar = sidecar_process.SidecarProcess(
        proc=None, url="http://127.0.0.1:4242", token="t", token_file=tmp_path / "token",
        log_path=tmp_path / "sidecar.log")
    assert sidecar.describe() == (f"ThunderAgent sidecar: http://127.0.0.1:4242 (token in "
                                  f"{tmp_path}/token, log in {tmp_path}/sidecar.log)")
    sidecar.token_file = None
    assert "(token from THUNDERAGENT_SIDECAR_TOKEN, log in" in sidecar.describe()


def test_a_sidecar_that_cannot_start_is_an_error_with_its_log_tail(tmp_path):
    root = sidecar_root(tmp_path, ["--port", "31999"])
    root.mkdir(parents=True)
    with open(root / "lock", "w") as held:  # as if another sidecar held this root
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SidecarStartError) as exc:
            sidecar_process.start(tmp_path, ["--port", "31999"], environ=dict(os.environ))
    message = str(exc.value)
    assert message.startswith("the sidecar exited with code 2:\n")
    assert f"another sidecar is running with --root {root}" in message
