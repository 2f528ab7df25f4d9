"""Build (once) and cache a tiny, randomly initialised demo model.

The model is built locally - no model hub needed: a byte-level BPE tokenizer is
trained on the committed ``demo_corpus.txt`` and a Llama / Qwen3 causal LM with
random weights is saved next to it.  The same spec always yields byte-identical
files.  This module deliberately avoids importing sglang, and imports
torch / transformers / tokenizers only inside the functions that need them.

CLI: ``python -m thunderagent_sglang.demo_model [--cache-dir DIR] [--arch qwen3]``
prints the model directory (building it on first use).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1
MARKER_FILE = "thunderagent_demo_model.json"
CORPUS_PATH = Path(__file__).with_name("demo_corpus.txt")
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
_SEED_LOCK = threading.Lock()  # model init uses torch's global RNG: one seeded init at a time
ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}

# ChatML; string content or a list of OpenAI-style {"type": "text"} parts.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- elif message['content'] is not none %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclasses.dataclass(frozen=True)
class DemoModelSpec:
    """The demo model's shape; the defaults give the small (~1M parameter) demo model."""

    arch: str = "llama"  # "llama" or "qwen3"
    vocab_size: int = 2048  # BPE vocab target, special tokens included
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {sorted(ARCHS)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, num_heads by num_kv_heads")
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError("vocab_size must cover the 256 byte tokens plus the special tokens")

    def fingerprint(self) -> str:
        """Short stable hash of all fields, the builder version and the corpus."""
        payload = json.dumps(
            {"spec": dataclasses.asdict(self), "builder": BUILDER_VERSION, "corpus": _corpus_sha256()},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def _corpus_sha256() -> str:
    return hashlib.sha256(CORPUS_PATH.read_bytes()).hexdigest()


def default_cache_dir() -> Path:
    """``$THUNDERAGENT_CACHE_DIR`` or ``~/.cache/thunderagent_sglang``."""
    env = os.environ.get("THUNDERAGENT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "thunderagent_sglang"


def is_complete(model_dir: Path) -> bool:
    return (Path(model_dir) / MARKER_FILE).is_file()


def ensure_demo_model(spec: DemoModelSpec = DemoModelSpec(), cache_dir: Path | None = None) -> Path:
    """Return the directory of the demo model for ``spec``, building it on first use."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    models = root / "demo-models"
    target = models / f"{spec.arch}-{spec.fingerprint()}"
    if is_complete(target):
        logger.info("reusing demo model %s at %s", spec.arch, target)
        return target
    models.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(models)
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=models))
    try:
        info = build_demo_model(spec, tmp)
        _install(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "building demo model %s (%.2fM params, vocab %d) into %s: done in %.2fs",
        spec.arch, info["num_parameters"] / 1e6, info["vocab_size"], target, time.monotonic() - start,
    )
    return target


def _remove_stale_temps(models: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp dirs left behind by builders that were killed mid-build."""
    for path in [*models.glob(".tmp-*"), *models.glob(".trash-*")]:
        with contextlib.suppress(OSError):  # may vanish concurrently
            if time.time() - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, target: Path) -> None:
    """Atomically move a finished build into place; keep a concurrent builder's copy if it won."""
    for _ in range(3):
        if is_complete(target):
            logger.info("demo model appeared concurrently at %s; discarding this build", target)
            return
        if target.exists():  # incomplete leftover of an interrupted build: move aside, delete
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{target.name}-", dir=target.parent))
            with contextlib.suppress(OSError):
                os.rename(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, target)
            return
        except OSError:
            continue  # someone else renamed into place meanwhile; re-check
    raise RuntimeError(f"could not install demo model into {target}")


def build_demo_model(spec: DemoModelSpec, out_dir: Path) -> dict:
    """Build tokenizer + random-weight model into ``out_dir``; writes (and returns) the marker last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(spec, out_dir)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    n_params = _build_model(spec, len(tokenizer), ids, out_dir)
    marker = {
        "spec": dataclasses.asdict(spec),
        "fingerprint": spec.fingerprint(),
        "builder_version": BUILDER_VERSION,
        "vocab_size": len(tokenizer),
        "num_parameters": n_params,
        "special_token_ids": ids,
    }
    _make_readable(out_dir)
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return marker


def _make_readable(out_dir: Path) -> None:
    """mkdtemp / safetensors create owner-only modes; the model may be served by another user."""
    out_dir.chmod(0o755)
    for path in out_dir.iterdir():
        path.chmod(0o644)


def _train_bpe(spec: DemoModelSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = CORPUS_PATH.read_text(encoding="utf-8")
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return tok


def _build_tokenizer(spec: DemoModelSpec, out_dir: Path):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(spec),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _model_config(spec: DemoModelSpec, vocab_size: int, ids: dict):
    import transformers

    config_cls = getattr(transformers, ARCHS[spec.arch][0])
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        dtype="float32",
    )


def _build_model(spec: DemoModelSpec, vocab_size: int, ids: dict, out_dir: Path) -> int:
    import torch
    import transformers
    from transformers import GenerationConfig

    config = _model_config(spec, vocab_size, ids)
    model_cls = getattr(transformers, ARCHS[spec.arch][1])
    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = model_cls(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT])
    bar_was_enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" tqdm
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if bar_was_enabled:
            transformers.utils.logging.enable_progress_bar()
    return sum(p.numel() for p in model.parameters())


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build (once) the demo model and print its directory.")
    parser.add_argument("--cache-dir", type=Path, help="default: $THUNDERAGENT_CACHE_DIR or ~/.cache/thunderagent_sglang")
    for f in dataclasses.fields(DemoModelSpec):
        kind = {"choices": sorted(ARCHS)} if f.name == "arch" else {"type": int}
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kind)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    spec = DemoModelSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoModelSpec)})
    print(ensure_demo_model(spec, args.cache_dir))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
