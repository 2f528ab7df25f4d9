"""Pure helpers: path refusal, sizes, the port table (unique under concurrency), settings, token."""

import os
import stat
import threading

import pytest

from thunderagent_sglang.sidecar import auth
from thunderagent_sglang.sidecar.errors import BadRequest, Conflict, Unauthorized
from thunderagent_sglang.sidecar.paths import inside, relative_parts
from thunderagent_sglang.sidecar.ports import PortTable
from thunderagent_sglang.sidecar.settings import from_args
from thunderagent_sglang.sidecar.sizes import parse_size


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a/\x00b", "a/.."])
def test_paths_leaving_the_workspace_are_refused(path):
    with pytest.raises(BadRequest):
        relative_parts(path)


def test_relative_paths_are_normalised():
    assert relative_parts("./a//b/./c") == ("a", "b", "c")
    assert relative_parts(".") == ()


def test_symlink_out_of_the_workspace_is_refused(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "out").symlink_to("/etc")
    (tmp_path / "ws" / "in").symlink_to("sub")
    with pytest.raises(BadRequest, match="outside"):
        inside(str(tmp_path / "ws"), "out/passwd")
    assert inside(str(tmp_path / "ws"), "in/f") == str(tmp_path / "ws" / "sub" / "f")


def test_sizes():
    assert [parse_size(x) for x in ("512", "4K", "1.5M", "2G", "2GiB", 7)] == [
        512, 4096, 1572864, 2 << 30, 2 << 30, 7]
    with pytest.raises(ValueError, match="K, M, G or T"):
        parse_size("lots")


def test_port_table_hands_each_port_to_one_env_under_concurrency():
    table = PortTable(30000, 30199, probe=False)
    got: dict[str, dict[str, int]] = {}

    def worker(i):
        got[f"e{i}"] = table.reserve(f"e{i}", ["web", "db"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ports = [p for names in got.values() for p in names.values()]
    assert len(ports) == 200 and len(set(ports)) == 200
    assert set(ports) == set(range(30000, 30200))
    with pytest.raises(Conflict, match="no free port"):
        table.reserve("late", ["x"])
    assert table.release("e7") == sorted(got["e7"].values())
    assert set(table.reserve("late", ["x", "y"]).values()) == set(got["e7"].values())


def test_port_table_all_or_nothing():
    table = PortTable(30000, 30001, probe=False)
    with pytest.raises(Conflict):
        table.reserve("e", ["a", "b", "c"])
    assert table.reserved() == {}


def test_port_table_skips_a_port_someone_listens_on():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        busy = sock.getsockname()[1]
        table = PortTable(busy, busy)  # a neighbour port may be anyone's: only the busy one
        with pytest.raises(Conflict) as exc:
            table.reserve("e", ["a"])
    assert str(exc.value) == (f"no free port left in {busy}-{busy}: destroy environments or "
                              "widen --port-range")
    assert PortTable(busy, busy).reserve("e", ["a"]) == {"a": busy}  # free again once closed


def test_settings_from_args():
    s = from_args(["--port", "0", "--root", "/tmp/r", "--idle-ttl", "5", "--max-running", "3",
                   "--disk-high-water", "10G", "--keep-layers", "a,b", "--port-range", "100-200"])
    assert (s.port, s.root, s.idle_ttl, s.max_running, s.disk_high_water, s.keep_layers,
            s.port_range) == (0, "/tmp/r", 5.0, 3, 10 << 30, frozenset({"a", "b"}), (100, 200))


def test_generated_token_file_is_owner_only(tmp_path):
    token, generated = auth.resolve_token(str(tmp_path / "token"), environ={})
    mode = stat.S_IMODE(os.stat(tmp_path / "token").st_mode)
    assert generated and mode == 0o600
    assert (tmp_path / "token").read_text().strip() == token
    assert auth.resolve_token(str(tmp_path / "t2"), {"THUNDERAGENT_SIDECAR_TOKEN": "x"}) == (
        "x", False)
    auth.check(f"Bearer {token}", token)
    with pytest.raises(Unauthorized, match="wrong token"):
        auth.check("Bearer nope", token)
    with pytest.raises(Unauthorized, match="missing token"):
        auth.check(None, token)
