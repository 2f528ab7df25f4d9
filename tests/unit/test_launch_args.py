"""The launcher's argument handling: our flags split off, CPU and demo defaults added."""

from __future__ import annotations

import pytest

from thunderagent_sglang import config, launch_args
from thunderagent_sglang.launch_args import NO_NCCL, cpu_bind, plan_launch, split_args

DEMO = "/cache/demo-models/llama-abc"


def test_split_args_takes_our_flags_and_leaves_sglang_flags_in_order():
    cfg, rest = split_args(["--port", "30001", "--thunderagent-demo-model", "qwen3",
                            "--thunderagent-cache-dir=/tmp/x", "--page-size", "16"])
    assert cfg == config.ThunderAgentConfig(cache_dir="/tmp/x", demo_model="qwen3")
    assert rest == ["--port", "30001", "--page-size", "16"]


def test_unknown_thunderagent_flag_is_an_argparse_error_naming_it(capsys):
    with pytest.raises(SystemExit) as exc:
        split_args(["--thunderagent-schedular", "thunder", "--port", "1"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --thunderagent-schedular" in capsys.readouterr().err


def test_abbreviated_thunderagent_flag_is_not_guessed(capsys):
    with pytest.raises(SystemExit):
        split_args(["--thunderagent-demo", "llama"])
    assert "--thunderagent-demo" in capsys.readouterr().err


def test_bad_demo_model_choice_is_refused(capsys):
    with pytest.raises(SystemExit):
        split_args(["--thunderagent-demo-model", "gpt2"])
    assert "invalid choice: 'gpt2'" in capsys.readouterr().err


def test_cpu_without_flags_gets_the_cpu_engine_and_the_demo_model():
    plan = plan_launch([], gpu_available=False, demo_model_dir=DEMO, environ={})
    assert plan.argv == ["--device", "cpu", "--sleep-on-idle", "--max-total-tokens", "65536",
                         "--radix-cache-backend", "thunderagent",
                         "--model-path", DEMO, "--dtype", "float32"]
    assert plan.env == {"SGLANG_USE_CPU_ENGINE": "1"}
    assert len(plan.notes) == 7


def test_plain_sglang_gets_no_cache_backend_of_ours():
    plan = plan_launch(["--model", "/m"], gpu_available=True, demo_model_dir=None,
                       environ={}, program_features=False)
    assert plan.argv == ["--model", "/m"]


@pytest.mark.parametrize("own", [["--radix-cache-backend", "default"], ["--enable-lmcache"],
                                 ["--disable-radix-cache"]])
def test_a_cache_the_user_chose_is_kept(own):
    plan = plan_launch(["--model", "/m", *own], gpu_available=True, demo_model_dir=None,
                       environ={})
    assert plan.argv == ["--model", "/m", *own]


def test_flags_the_user_passes_win_on_cpu():
    argv = ["--model-path", "/m", "--device=cpu", "--max-total-tokens", "4096",
            "--sleep-on-idle"]
    plan = plan_launch(argv, gpu_available=False, demo_model_dir=None,
                       environ={"SGLANG_USE_CPU_ENGINE": "1"}, program_features=False)
    assert plan.argv == argv
    assert plan.env == {}
    assert plan.notes == []


def test_tensor_parallel_ranks_on_a_cpu_get_their_cores_and_gloo():
    plan = plan_launch(["--model", "/m", "--tp-size", "2"], gpu_available=False,
                       demo_model_dir=None, environ={}, cpus=(0, 1))
    assert (plan.env["SGLANG_CPU_OMP_THREADS_BIND"], plan.env["SGLANG_NCCL_SO_PATH"]) == (
        "0|1", NO_NCCL)
    assert any("2 tensor-parallel ranks" in n for n in plan.notes)
    mine = plan_launch(["--model", "/m", "--tensor-parallel-size=2"], gpu_available=False,
                       demo_model_dir=None, cpus=(0, 1),
                       environ={"SGLANG_CPU_OMP_THREADS_BIND": "1|0",
                                "SGLANG_NCCL_SO_PATH": "/x"})
    assert "SGLANG_CPU_OMP_THREADS_BIND" not in mine.env and "SGLANG_NCCL_SO_PATH" not in mine.env
    one = plan_launch(["--model", "/m", "--tp-size", "1"], gpu_available=False,
                      demo_model_dir=None, environ={}, cpus=(0, 1))
    gpu = plan_launch(["--model", "/m", "--tp-size", "2"], gpu_available=True,
                      demo_model_dir=None, environ={}, cpus=(0, 1))
    assert "SGLANG_CPU_OMP_THREADS_BIND" not in one.env and gpu.env == {}


@pytest.mark.parametrize("ranks, cpus, bind", [
    (2, (0, 1), "0|1"), (2, tuple(range(8)), "0-3|4-7"), (2, (0, 2, 4, 6), "0,2|4,6"),
    (3, (0, 1, 2, 3, 4), "0|1|2"), (2, (5,), "5|5"), (4, (3, 1, 0, 2), "0|1|2|3")])
def test_cpu_bind_splits_the_cores_into_equal_runs(ranks, cpus, bind):
    assert cpu_bind(ranks, cpus) == bind


def test_mem_fraction_static_counts_as_sizing_the_pool():
    plan = plan_launch(["--model", "/m", "--mem-fraction-static", "0.05"],
                       gpu_available=False, demo_model_dir=None, environ={})
    assert "--max-total-tokens" not in plan.argv


def test_gpu_machine_keeps_sglang_gpu_defaults():
    plan = plan_launch(["--model-path", "/m"], gpu_available=True, demo_model_dir=None,
                       environ={}, program_features=False)
    assert plan.argv == ["--model-path", "/m"]
    assert plan.env == {}


def test_explicit_cpu_device_on_a_gpu_machine_still_selects_the_cpu_engine():
    plan = plan_launch(["--device", "cpu"], gpu_available=True, demo_model_dir=DEMO, environ={})
    assert plan.env == {"SGLANG_USE_CPU_ENGINE": "1"}
    assert plan.argv[:2] == ["--device", "cpu"]


def test_user_dtype_wins_for_the_demo_model():
    plan = plan_launch(["--dtype", "bfloat16"], gpu_available=True, demo_model_dir=DEMO,
                       environ={}, program_features=False)
    assert plan.argv == ["--dtype", "bfloat16", "--model-path", DEMO]


@pytest.mark.parametrize("argv", [["--model", "m"], ["--model-path=m"], ["--config", "c.yaml"]])
def test_no_demo_model_when_a_model_or_config_is_given(argv):
    assert not launch_args.needs_demo_model(argv)


def test_flag_value_takes_the_last_occurrence_in_either_form():
    argv = ["--dp-size", "2", "--dp-size=4"]
    assert launch_args.flag_value(argv, "--dp-size") == "4"
    assert launch_args.flag_value(argv, "--tp-size") is None


def test_scheduler_offload_and_sidecar_flags_reach_the_config():
    cfg, rest = split_args([
        "--thunderagent-scheduler", "off", "--thunderagent-tick", "0.25",
        "--thunderagent-high-watermark", "0.9", "--thunderagent-low-watermark", "0.7",
        "--thunderagent-max-pause", "120", "--thunderagent-offload", "off",
        "--thunderagent-recompute-rate", "5000", "--thunderagent-sidecar-url", "http://x:1",
        "--thunderagent-backfill", "off", "--port", "1"])
    assert rest == ["--port", "1"]
    assert (cfg.scheduler, cfg.tick_s, cfg.high_watermark, cfg.low_watermark, cfg.max_pause_s,
            cfg.offload, cfg.recompute_rate, cfg.sidecar, cfg.sidecar_url, cfg.backfill) == (
        "off", 0.25, 0.9, 0.7, 120.0, "off", 5000.0, False, "http://x:1", False)
    assert split_args([])[0].backfill is True
    assert config.ThunderAgentConfig.from_env({config.CONFIG_ENV: cfg.to_env()}) == cfg


@pytest.mark.parametrize("argv, message", [
    (["--thunderagent-low-watermark", "0.99"], "the low one must not exceed the high one"),
    (["--thunderagent-high-watermark", "1.5"], "must be a fraction in (0, 1], got 1.5"),
    (["--thunderagent-sidecar", "--thunderagent-sidecar-url", "http://x:1"], "give one of them"),
    (["--thunderagent-offload-latency", "-1"], "must be zero or more, got -1"),
])
def test_inconsistent_scheduler_and_sidecar_flags_are_argparse_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        split_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
