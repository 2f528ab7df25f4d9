"""The fleet's pure parts: its checks, bundles, actor names and command lines."""

from __future__ import annotations

import pytest

from thunderagent_sglang.cluster.__main__ import main
from thunderagent_sglang.cluster.spec import (
    FleetSpec,
    SpecError,
    bundle,
    replica_name,
    router_command,
    router_env,
    server_command,
    url_for,
)


@pytest.mark.parametrize("kwargs,message", [
    ({"replicas": 0}, "--replicas"),
    ({"replicas": 2, "name": "Big"}, "--name"),
    ({"replicas": 2, "name": "a b"}, "--name"),
    ({"replicas": 2, "name": "x" * 33}, "--name"),
    ({"replicas": 2, "cpus_per_replica": 0}, "--cpus-per-replica"),
    ({"replicas": 2, "max_restarts": -1}, "--max-restarts"),
    ({"replicas": 2, "replica_port": 65535}, "--replica-port"),
    ({"replicas": 2, "strategy": "RANDOM"}, "--placement-strategy"),
    ({"replicas": 2, "server_args": ("--port", "1")}, "--replica-port"),
    ({"replicas": 2, "server_args": ("--host=0.0.0.0",)}, "--host"),
    ({"replicas": 2, "server_args": ("--dp-size", "2")}, "--replicas N"),
    ({"replicas": 2, "server_args": ("--tp-size", "two")}, "--tp-size"),
])
def test_a_fleet_that_cannot_start_is_refused_naming_the_flag(kwargs, message):
    with pytest.raises(SpecError, match=message):
        FleetSpec(**kwargs)


def test_bundles_give_a_gpu_per_rank_on_a_gpu_cluster_and_none_on_a_cpu_one():
    tp2 = FleetSpec(replicas=2, server_args=("--tp-size=2", "--model-path", "m"))
    assert bundle(tp2, cluster_gpus=16) == {"CPU": 1.0, "GPU": 2.0}
    assert bundle(tp2, cluster_gpus=0) == {"CPU": 1.0}
    assert bundle(FleetSpec(replicas=1, gpus_per_replica=1, cpus_per_replica=4), 0) == {
        "CPU": 4.0, "GPU": 1.0}


def test_command_lines_carry_the_flags_and_keys_travel_in_the_environment():
    spec = FleetSpec(replicas=2, name="f1", server_args=(
        "--api-key", "k", "--admin-api-key", "adm", "--max-total-tokens", "2048"),
        router_args=("--migration=off",))
    assert replica_name("f1", 1) == "f1-replica-1"
    assert server_command("py", spec, "10.0.0.2", 30001) == [
        "py", "-m", "thunderagent_sglang.launch_server", "--api-key", "k", "--admin-api-key",
        "adm", "--max-total-tokens", "2048", "--host", "10.0.0.2", "--port", "30001"]
    command = router_command("py", spec, {"f1-replica-1": "http://b:1", "f1-replica-0":
                                          "http://a:1"}, "10.0.0.1", 30010)
    assert command == ["py", "-m", "thunderagent_sglang.router", "--backends",
                       "f1-replica-0=http://a:1,f1-replica-1=http://b:1", "--host", "10.0.0.1",
                       "--port", "30010", "--migration=off"]
    assert "adm" not in command and "k" not in command
    assert router_env(spec, "reg") == {"THUNDERAGENT_ROUTER_ADMIN_KEY": "reg",
                                       "THUNDERAGENT_ROUTER_API_KEY": "k",
                                       "THUNDERAGENT_ROUTER_BACKEND_ADMIN_KEY": "adm"}
    assert url_for("fd00::2", 1) == "http://[fd00::2]:1"


def test_the_command_line_refuses_bad_flags_before_touching_ray(capsys):
    assert main(["up", "--replicas", "2", "--", "--port", "30000"]) == 2
    assert "leave --port out of the server flags" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["up"])  # --replicas is required: argparse's usage error
