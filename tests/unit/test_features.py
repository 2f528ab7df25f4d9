"""SGLang features our layer refuses at launch, and the README table that lists them."""

from __future__ import annotations

from pathlib import Path

import pytest

from thunderagent_sglang import features

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("argv,flag", [
    (["--disable-radix-cache"], "--disable-radix-cache"),
    (["--dp-size", "2"], "--dp-size"),
    (["--data-parallel-size=4"], "--data-parallel-size"),
    (["--disaggregation-mode", "prefill"], "--disaggregation-mode"),
    (["--pp-size", "2"], "--pp-size"),
    (["--nnodes", "2"], "--nnodes"),
    (["--enable-dp-attention"], "--enable-dp-attention"),
])
def test_refused_feature_gives_one_message_naming_the_flag_and_the_way_out(argv, flag):
    (message,) = features.refusals(argv)
    assert message.startswith(f"{flag} (")
    assert "THUNDERAGENT_DISABLE=1" in message


@pytest.mark.parametrize("argv", [
    [], ["--dp-size", "1"], ["--disaggregation-mode", "null"], ["--page-size", "16"],
    ["--tp-size", "1"], ["--tp-size", "2"], ["--tensor-parallel-size=8"], ["--pp-size=1"],
    ["--nnodes", "1"],
    ["--enable-hierarchical-cache", "--chunked-prefill-size", "64"]])
def test_supported_flags_are_not_refused(argv):
    assert features.refusals(argv) == []


def test_readme_table_lists_every_feature_with_its_status():
    text = README.read_text()
    for feature in features.FEATURES:
        row = next((line for line in text.splitlines()
                    if line.startswith(f"| {feature.name} |")), None)
        assert row is not None, f"README lacks a row for {feature.name}"
        assert f"| {feature.status} |" in row
