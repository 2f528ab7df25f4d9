"""Tests for the embedded demo model builder (CPU only, a few seconds in total)."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from pathlib import Path

import pytest

from thunderagent_sglang import demo_model as dm

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


def _file_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="module")
def model_dir(cache_dir) -> Path:
    return dm.ensure_demo_model(dm.DemoModelSpec(), cache_dir=cache_dir)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def test_import_is_cheap():
    import subprocess

    code = (
        "import sys, thunderagent_sglang; before = set(sys.modules);"
        "import thunderagent_sglang.demo_model;"
        "heavy = {'torch', 'transformers', 'tokenizers', 'sglang'} & set(sys.modules) - before;"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layout_and_marker(model_dir, cache_dir):
    spec = dm.DemoModelSpec()
    assert model_dir == cache_dir / "demo-models" / f"llama-{spec.fingerprint()}"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", dm.MARKER_FILE} <= names
    marker = json.loads((model_dir / dm.MARKER_FILE).read_text())
    assert marker["fingerprint"] == spec.fingerprint()
    assert marker["spec"]["arch"] == "llama"
    assert marker["vocab_size"] == spec.vocab_size  # the corpus is rich enough to reach the target
    assert not [p.name for p in (cache_dir / "demo-models").iterdir() if p.name.startswith(".")]  # no temp dirs


def test_fingerprint_stable_and_sensitive():
    a = dm.DemoModelSpec()
    assert a.fingerprint() == dm.DemoModelSpec().fingerprint()
    assert len(a.fingerprint()) == 12
    assert a.fingerprint() != dm.DemoModelSpec(seed=1).fingerprint()
    assert a.fingerprint() != dm.DemoModelSpec(arch="qwen3").fingerprint()
    with pytest.raises(ValueError):
        dm.DemoModelSpec(arch="gpt2")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("THUNDERAGENT_CACHE_DIR", str(tmp_path))
    assert dm.default_cache_dir() == tmp_path
    monkeypatch.delenv("THUNDERAGENT_CACHE_DIR")
    assert dm.default_cache_dir() == Path.home() / ".cache" / "thunderagent_sglang"


def test_deterministic_build(model_dir, tmp_path):
    dm.build_demo_model(dm.DemoModelSpec(), tmp_path / "again")
    first, second = _file_hashes(model_dir), _file_hashes(tmp_path / "again")
    assert "model.safetensors" in first
    assert first == second


def test_reuse_does_not_rebuild(model_dir, cache_dir, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt an existing complete model")

    marker_mtime = (model_dir / dm.MARKER_FILE).stat().st_mtime_ns
    monkeypatch.setattr(dm, "build_demo_model", fail)
    with caplog.at_level(logging.INFO, logger=dm.__name__):
        assert dm.ensure_demo_model(dm.DemoModelSpec(), cache_dir=cache_dir) == model_dir
    assert (model_dir / dm.MARKER_FILE).stat().st_mtime_ns == marker_mtime
    assert any("reusing demo model llama" in r.getMessage() for r in caplog.records)


def test_incomplete_dir_is_rebuilt(tmp_path, caplog):
    spec = dm.DemoModelSpec()
    target = tmp_path / "demo-models" / f"llama-{spec.fingerprint()}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half written")
    with caplog.at_level(logging.INFO, logger=dm.__name__):
        assert dm.ensure_demo_model(spec, cache_dir=tmp_path) == target
    assert dm.is_complete(target)
    json.loads((target / "config.json").read_text())
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("building demo model llama (") and "vocab 2048" in m and str(target) in m
               for m in messages), messages


def test_concurrent_builders_agree(tmp_path):
    results, errors = [], []

    def build():
        try:
            results.append(dm.ensure_demo_model(dm.DemoModelSpec(), cache_dir=tmp_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1 and dm.is_complete(results[0])
    assert [p.name for p in (tmp_path / "demo-models").iterdir()] == [results[0].name]


@pytest.mark.parametrize(
    "text",
    ["Hello, world!", "", "  two leading spaces\n\ttab", "def f(x):\n    return x ** 2  # ok",
     "ünïcødé 日本語 🚀 \x00 \r\n", "<|im_start|>user\nhi<|im_end|>\n"],
)
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_special_tokens_and_chat_template(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    for tok in dm.SPECIAL_TOKENS:  # each special token is a single id
        assert len(tokenizer.encode(tok, add_special_tokens=False)) == 1
    messages = [{"role": "system", "content": "You are a helpful agent."},
                {"role": "user", "content": "List the files."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful agent.<|im_end|>\n"
                    "<|im_start|>user\nList the files.<|im_end|>\n<|im_start|>assistant\n")
    no_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert no_prompt == text[: -len("<|im_start|>assistant\n")]
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == "<|im_start|>user\nab<|im_end|>\n"
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert tokenizer.decode(encoded["input_ids"]) == text


def test_config_ids_match_tokenizer(model_dir, tokenizer):
    config = json.loads((model_dir / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert config["eos_token_id"] == generation["eos_token_id"] == eos == tokenizer.eos_token_id
    assert config["pad_token_id"] == generation["pad_token_id"] == pad == tokenizer.pad_token_id
    assert config["bos_token_id"] == pad
    assert config["vocab_size"] == len(tokenizer)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is False and config["dtype"] == "float32"


def _greedy(model, tokenizer, prompt: str, n: int = 12) -> list[int]:
    import torch

    enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                        add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_model_generates_varied_greedy_outputs(model, tokenizer):
    import torch

    assert model.dtype == torch.float32
    prompts = ["List the files.", "What is a token?", "Run the unit tests.", "def add(a, b):"]
    outputs = [_greedy(model, tokenizer, p) for p in prompts]
    assert all(len(o) == 12 for o in outputs)
    assert len({tuple(o) for o in outputs}) > 1
    assert all(len(set(o)) > 1 for o in outputs)  # not one token repeated
    assert _greedy(model, tokenizer, prompts[0]) == outputs[0]  # greedy is deterministic


def test_qwen3_builds_and_loads(cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = dm.ensure_demo_model(dm.DemoModelSpec(arch="qwen3"), cache_dir=cache_dir)
    assert path.name.startswith("qwen3-")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["head_dim"] == 32
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert len(_greedy(model, tok, "hello", n=4)) == 4


def test_cli_prints_model_dir(model_dir, cache_dir, capsys):
    assert dm.main(["--cache-dir", str(cache_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(model_dir)
