"""The profile summary's shares, exactly, on a constructed py-spy raw profile."""

from __future__ import annotations

from benchmarks.profile_summary import frame_name, summarize

RAW = [
    "main (s.py:1);wrapper (thunderagent_sglang/engine/offload.py:9);Scheduler.run_batch "
    "(sglang/scheduler.py:10);forward (llama.py:5) 90",
    "main (s.py:1);recv (sglang/receiver.py:3) 6",
    "main (s.py:1);hook (thunderagent_sglang/engine/runtime.py:7);set_context (demand.py:2) 4",
]


def test_shares_inside_and_outside_the_forward_and_ours():
    text = summarize(RAW)
    assert text.splitlines()[0] == ("samples: 100; in the forward (Scheduler.run_batch): 90.0%; "
                                    "outside it: 10.00% (in thunderagent_sglang code: 4.00%)")
    assert "     6  main (s.py) > recv (receiver.py)" in text
    assert "     4  [ours] main (s.py) > hook (runtime.py) > set_context (demand.py)" in text
    assert "100.00%  main (s.py)" in text


def test_frame_names_drop_paths_and_lines():
    assert frame_name("f (a/b/c.py:12)") == "f (c.py)"
    assert frame_name("<idle>") == "<idle>"
