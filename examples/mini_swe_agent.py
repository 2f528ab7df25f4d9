"""mini-swe-agent (the agent of the paper's SWE runs) against ThunderAgent-SGLang: one agent
run is one LLM program. Its id rides every call as the X-Program-Id header (litellm's
``extra_headers`` in the model's ``model_kwargs``), and the run releases it when it ends, so
its KV goes at once.

    .venv/bin/python examples/mini_swe_agent.py --server http://127.0.0.1:30000 --steps 4 \\
        --task "Count the Python files in this directory"

The agent runs its bash actions in ``--workdir`` on this machine (mini-swe-agent's
LocalEnvironment): point it at a scratch directory, or use the sidecar's environments.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download
os.environ.setdefault("MSWEA_SILENT_STARTUP", "1")

import httpx  # noqa: E402
import yaml  # noqa: E402
from minisweagent import package_dir  # noqa: E402
from minisweagent.agents.default import DefaultAgent  # noqa: E402
from minisweagent.environments.local import LocalEnvironment  # noqa: E402
from minisweagent.models.litellm_model import LitellmModel  # noqa: E402


def make_agent(server: str, program_id: str, steps: int, workdir: str,
               model: str = "demo", api_key: str = "none") -> DefaultAgent:
    config = yaml.safe_load((package_dir / "config" / "default.yaml").read_text())
    llm = LitellmModel(
        model_name=f"openai/{model}",  # litellm's OpenAI-compatible provider
        cost_tracking="ignore_errors",  # a local model has no price
        model_kwargs={**config["model"].get("model_kwargs", {}),
                      "api_base": f"{server}/v1", "api_key": api_key, "max_tokens": 256,
                      "extra_headers": {"X-Program-Id": program_id}})
    env = LocalEnvironment(cwd=workdir, **config.get("environment", {}))
    return DefaultAgent(llm, env, **{**config["agent"], "step_limit": steps,
                                     "max_consecutive_format_errors": 0})


def release(server: str, program_id: str, api_key: str = "none") -> dict:
    """End the program: its KV (and any tool environment of the sidecar) is freed now."""
    response = httpx.post(f"{server}/programs/{program_id}/release", timeout=30,
                          headers={"Authorization": f"Bearer {api_key}"})
    return response.json()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:30000")
    p.add_argument("--task", default="List the files here and say which is largest.")
    p.add_argument("--steps", type=int, default=4, help="the agent's step limit")
    p.add_argument("--model", default="demo")
    p.add_argument("--api-key", default=os.environ.get("THUNDERAGENT_API_KEY", "none"))
    p.add_argument("--workdir", default=None, help="where its commands run (default: a new "
                   "temporary directory)")
    args = p.parse_args()
    program_id = f"mini-swe-{uuid.uuid4().hex[:12]}"
    workdir = args.workdir or tempfile.mkdtemp(prefix="mini-swe-")
    agent = make_agent(args.server, program_id, args.steps, workdir, args.model, args.api_key)
    try:
        result = agent.run(args.task)
    finally:
        record = release(args.server, program_id, args.api_key)
    print(f"program {program_id}: exit {result.get('exit_status')}, {record.get('steps')} "
          f"calls, {record.get('prefill_tokens_cached')} prompt tokens from cache, "
          f"released ({record.get('release_cause')})")


if __name__ == "__main__":
    main()
