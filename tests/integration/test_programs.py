"""Program identity on every request path, the lifecycle in the scheduler, the /programs API."""

from __future__ import annotations

import json
import threading
import time
import uuid

import openai
import pytest
import requests

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.server


def new_id() -> str:
    return f"prog-{uuid.uuid4().hex[:8]}"


def chat(server, headers=None, extra_body=None, max_tokens=4, **kwargs):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    return client.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "List the files."}],
        max_tokens=max_tokens, temperature=0, extra_headers=headers, extra_body=extra_body,
        **kwargs)


def record(server, program_id, **kwargs):
    return requests.get(f"{server.url}/programs/{program_id}", timeout=30, **kwargs)


def test_header_tagged_chat_call_is_accounted_to_its_program(default_server):
    pid = new_id()
    raw = chat(default_server, headers={"X-Program-Id": pid})
    usage = raw.parse().usage
    assert raw.headers["x-program-id"] == pid
    assert raw.headers["x-program-id-source"] == "header:x-program-id"
    rec = record(default_server, pid).json()
    assert rec["status"] == "active" and rec["phase"] == "acting" and rec["steps"] == 1
    assert rec["incarnation"] == 1 and rec["in_flight"] == 0
    assert rec["context_tokens"] == usage.prompt_tokens + usage.completion_tokens
    assert rec["prefill_tokens_computed"] + rec["prefill_tokens_cached"] == usage.prompt_tokens
    assert rec["decode_tokens"] == usage.completion_tokens == 4


def test_second_call_of_a_program_hits_the_cache_for_its_first_prompt(default_server):
    pid = new_id()
    messages = [{"role": "user", "content": f"{pid}: run the test suite please"}]
    client = openai.OpenAI(base_url=f"{default_server.url}/v1", api_key="unused")
    first = client.chat.completions.create(model="demo", messages=messages, max_tokens=4,
                                           extra_headers={"X-Program-Id": pid})
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "tool output: 2 passed"}]
    client.chat.completions.create(model="demo", messages=messages, max_tokens=4,
                                   extra_headers={"X-Program-Id": pid})
    rec = record(default_server, pid).json()
    assert rec["steps"] == 2
    assert rec["prefill_tokens_cached"] >= first.usage.prompt_tokens - 1


@pytest.mark.parametrize("field", ["program_id", "job_id"])
def test_body_id_on_openai_completions_is_read(default_server, field):
    pid = new_id()
    client = openai.OpenAI(base_url=f"{default_server.url}/v1", api_key="unused")
    raw = client.completions.with_raw_response.create(
        model="demo", prompt="def main():", max_tokens=3, extra_body={field: pid})
    assert raw.headers["x-program-id-source"] == f"body:{field}"
    assert record(default_server, pid).json()["steps"] == 1


def test_native_generate_with_body_program_id(default_server):
    pid = new_id()
    reply = requests.post(f"{default_server.url}/generate", json={
        "text": "ls -la", "program_id": pid,
        "sampling_params": {"max_new_tokens": 3, "ignore_eos": True}},
        timeout=60)
    assert reply.headers["x-program-id"] == pid
    assert record(default_server, pid).json()["decode_tokens"] == 3


def test_streaming_call_is_tagged_and_accounted(default_server):
    pid = new_id()
    client = openai.OpenAI(base_url=f"{default_server.url}/v1", api_key="unused")
    with client.chat.completions.with_streaming_response.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
            extra_headers={"X-Program-Id": pid}) as response:
        assert response.headers["x-program-id"] == pid
        chunks = list(response.parse())
    # SGLang may coalesce tokens into one chunk under load; the usage chunk is exact.
    assert len([c for c in chunks if c.choices]) >= 2
    assert chunks[-1].usage.completion_tokens == 5
    rec = record(default_server, pid).json()
    assert rec["decode_tokens"] == 5 and rec["phase"] == "acting"


def test_header_wins_over_a_different_body_id_and_the_response_says_so(default_server):
    header_id, body_id = new_id(), new_id()
    raw = chat(default_server, headers={"X-Program-Id": header_id},
               extra_body={"program_id": body_id})
    assert raw.headers["x-program-id"] == header_id
    assert record(default_server, header_id).status_code == 200
    assert record(default_server, body_id).status_code == 404


def test_sglang_session_id_is_not_a_program_id(default_server):
    session = new_id()
    requests.post(f"{default_server.url}/generate", json={
        "text": "x", "session_id": session, "sampling_params": {"max_new_tokens": 1}}, timeout=60)
    assert record(default_server, session).status_code == 404


@pytest.mark.parametrize("bad,kind", [("", "an empty string"), ("x" * 257, "257 characters"),
                                      (7, "int"), (["a"], "list")])
def test_invalid_body_id_is_400_naming_the_field(default_server, bad, kind):
    reply = requests.post(f"{default_server.url}/v1/chat/completions", json={
        "model": "demo", "messages": [{"role": "user", "content": "x"}], "program_id": bad},
        timeout=60)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "body field 'program_id'" and kind in error["message"]


def test_invalid_header_id_is_400_and_the_server_keeps_serving(default_server):
    reply = requests.post(f"{default_server.url}/generate", headers={"X-Program-Id": "a\tb"},
                          json={"text": "x", "sampling_params": {"max_new_tokens": 1}}, timeout=60)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "header X-Program-Id"
    assert requests.get(f"{default_server.url}/health_generate", timeout=60).status_code == 200


def test_untagged_calls_create_no_program(default_server):
    before = requests.get(f"{default_server.url}/programs", timeout=30).json()["programs"]
    chat(default_server)
    after = requests.get(f"{default_server.url}/programs", timeout=30).json()["programs"]
    assert len(after) == len(before)


def test_release_ends_the_program_and_the_id_starts_a_new_incarnation(default_server):
    pid = new_id()
    chat(default_server, headers={"X-Program-Id": pid})
    released = requests.post(f"{default_server.url}/programs/release",
                             json={"program_id": pid}, timeout=30).json()
    assert released["status"] == "terminated" and released["release_cause"] == "explicit"
    again = requests.post(f"{default_server.url}/programs/release",
                          json={"program_id": pid}, timeout=30)
    assert again.status_code == 404
    chat(default_server, headers={"X-Program-Id": pid})
    rec = record(default_server, pid).json()
    assert rec["incarnation"] == 2 and rec["status"] == "active" and rec["steps"] == 1


def test_release_of_an_unknown_id_is_404_json(default_server):
    reply = requests.post(f"{default_server.url}/programs/release",
                          json={"program_id": "never-seen"}, timeout=30)
    assert reply.status_code == 404
    assert reply.json() == {"error": "unknown program id 'never-seen'"}


def test_final_marker_ends_the_program_after_its_call(default_server):
    pid = new_id()
    chat(default_server, headers={"X-Program-Id": pid, "X-Program-Final": "1"})
    rec = record(default_server, pid).json()
    assert rec["status"] == "terminated" and rec["release_cause"] == "final"
    assert rec["steps"] == 1


def test_concurrent_calls_of_one_program_are_counted_once_each(default_server):
    pid = new_id()
    threads = [threading.Thread(target=chat, args=(default_server,),
                                kwargs={"headers": {"X-Program-Id": pid}, "max_tokens": 16})
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec = record(default_server, pid).json()
    assert rec["steps"] == 3 and rec["in_flight"] == 0 and rec["phase"] == "acting"
    assert rec["decode_tokens"] == 48


def test_tool_hints_and_operator_pause_resume(default_server):
    pid = new_id()
    chat(default_server, headers={"X-Program-Id": pid})
    url = f"{default_server.url}/programs/{pid}"
    assert requests.post(f"{url}/tool", json={"event": "start", "expected_s": 3},
                         timeout=30).json()["tool_running"] is True
    assert requests.post(f"{url}/tool", json={"event": "end"}, timeout=30).json()["tool_running"] is False
    bad = requests.post(f"{url}/tool", json={"event": "halfway"}, timeout=30)
    assert bad.status_code == 400 and "halfway" in bad.json()["error"]
    assert requests.post(f"{url}/pause", timeout=30).json()["status"] == "paused"
    assert requests.post(f"{url}/resume", timeout=30).json()["status"] == "active"
    missing = requests.post(f"{default_server.url}/programs/nobody/pause", timeout=30)
    assert missing.status_code == 404


def test_profiles_alias_returns_the_same_record(default_server):
    pid = new_id()
    chat(default_server, headers={"X-Program-Id": pid})
    profile = requests.get(f"{default_server.url}/profiles/{pid}", timeout=30).json()
    assert profile["program_id"] == pid and profile["steps"] == 1


def test_program_endpoints_need_the_api_key_when_one_is_set(hicache_server):
    url = f"{hicache_server.url}/programs"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    ok = requests.get(url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert ok.status_code == 200 and "programs" in ok.json()


def test_idle_program_expires_and_a_tool_hint_keeps_it_alive(hicache_server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    idle, busy = new_id(), new_id()
    for pid in (idle, busy):
        requests.post(f"{hicache_server.url}/generate", headers={**auth, "X-Program-Id": pid},
                      json={"text": "x", "sampling_params": {"max_new_tokens": 1}}, timeout=60)
    # A tool start without its end protects for twice expected_s (60 s), past the 2 s expiry.
    requests.post(f"{hicache_server.url}/programs/{busy}/tool", headers=auth,
                  json={"event": "start", "expected_s": 30}, timeout=30)
    time.sleep(4.5)  # idle expiry is 2 s; the idle scheduler expires on the next look
    idle_rec = record(hicache_server, idle, headers=auth).json()
    assert idle_rec["status"] == "terminated" and idle_rec["release_cause"] == "idle"
    assert record(hicache_server, busy, headers=auth).json()["status"] == "active"


def metric(server, name: str, **headers) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.url}/metrics", headers=headers, timeout=30).text
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    return values[name] if isinstance(name, tuple) else values[(name, ())]


def test_metrics_count_tagged_calls_and_releases(default_server):
    computed = ("thunderagent_prefill_tokens_total", (("kind", "computed"),))
    explicit = ("thunderagent_program_releases_total", (("cause", "explicit"),))
    before = metric(default_server, computed), metric(default_server, explicit)
    pid = new_id()
    usage = chat(default_server, headers={"X-Program-Id": pid}).parse().usage
    requests.post(f"{default_server.url}/programs/release", json={"program_id": pid}, timeout=30)
    rec = record(default_server, pid).json()
    assert metric(default_server, computed) == before[0] + rec["prefill_tokens_computed"]
    assert rec["prefill_tokens_computed"] + rec["prefill_tokens_cached"] == usage.prompt_tokens
    assert metric(default_server, explicit) == before[1] + 1


def test_metrics_keep_sglangs_own_series_beside_ours(hicache_server):
    text = requests.get(f"{hicache_server.url}/metrics", timeout=30).text
    assert "sglang:" in text  # --enable-metrics: SGLang's series answer first
    assert "thunderagent_programs{status=\"active\"}" in text


def generate_ids(server, pid, ids, max_new_tokens=4):
    reply = requests.post(f"{server.url}/generate", headers={"X-Program-Id": pid}, json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True},
    }, timeout=60).json()
    return reply["output_ids"], reply["meta_info"]["cached_tokens"]


def test_recompute_after_eviction_is_counted_as_missed_evicted(default_server):
    pid = new_id()
    first = [1000 + i for i in range(50)]
    out, _ = generate_ids(default_server, pid, first)
    assert requests.post(f"{default_server.url}/flush_cache", timeout=60).status_code == 200
    second = first + out + list(range(300, 320))
    _, cached = generate_ids(default_server, pid, second)
    rec = record(default_server, pid).json()
    assert cached == 0
    # All 53 tokens of its previous sequence that had KV (50 prompt + 3 of 4 outputs) were lost.
    assert (rec["missed_evicted_tokens"], rec["missed_changed_tokens"]) == (53, 0)


def test_recompute_of_a_changed_prefix_is_counted_as_missed_changed(default_server):
    pid = new_id()
    first = [1200 + i for i in range(60)]
    out, _ = generate_ids(default_server, pid, first)
    second = first + out + list(range(400, 410))  # 74 tokens, extends the first call
    out2, cached2 = generate_ids(default_server, pid, second)
    assert cached2 == 63 and record(default_server, pid).json()["missed_evicted_tokens"] == 0
    third = second[:10] + [7] + second[11:] + out2 + [5, 6]  # the client rewrote token 10
    _, cached3 = generate_ids(default_server, pid, third)
    rec = record(default_server, pid).json()
    assert cached3 == 10
    # Positions 10..76 of the previous sequence (74 prompt + 3 outputs with KV) had to be recomputed.
    assert (rec["missed_evicted_tokens"], rec["missed_changed_tokens"]) == (0, 67)


def test_untagged_call_continuing_a_programs_sequence_is_linked_to_it(hicache_server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    pid = new_id()

    def call(ids, headers):
        return requests.post(f"{hicache_server.url}/generate", headers={**auth, **headers}, json={
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True},
        }, timeout=60).json()["output_ids"]

    def count_programs():
        return len(requests.get(f"{hicache_server.url}/programs", headers=auth,
                                timeout=30).json()["programs"])

    before = count_programs()
    first = [1500 + i for i in range(40)]
    out = call(first, {"X-Program-Id": pid})
    call(first + out + [11, 12, 13], {})          # continues the program: linked
    call([1900 + i for i in range(40)], {})       # continues nobody: stays untagged
    rec = record(hicache_server, pid, headers=auth).json()
    assert rec["steps"] == 2 and rec["decode_tokens"] == 6
    assert count_programs() == before + 1  # the unrelated untagged call made no program


def test_demand_counts_a_shared_prefix_once_and_unique_tokens_per_program(default_server):
    def demand():
        return requests.get(f"{default_server.url}/programs", timeout=30).json()["demand_tokens"]

    before = demand()
    shared = [1700 + i for i in range(64)]  # 4 blocks of 16 tokens
    a, b = new_id(), new_id()
    # Each keeps 64 shared + 30 own prompt tokens + 2 outputs with KV = 96 tokens = 6 blocks.
    generate_ids(default_server, a, shared + [100 + i for i in range(30)], max_new_tokens=3)
    generate_ids(default_server, b, shared + [200 + i for i in range(30)], max_new_tokens=3)
    assert demand() == before + 64 + 32 + 32
    rec_a = record(default_server, a).json()
    assert rec_a["unique_tokens"] == 32 and rec_a["context_tokens"] == 97
    requests.post(f"{default_server.url}/programs/{a}/pause", timeout=30)
    assert demand() == before + 64 + 32  # a paused program is not active demand
    requests.post(f"{default_server.url}/programs/{a}/resume", timeout=30)
    requests.post(f"{default_server.url}/programs/release", json={"program_id": b}, timeout=30)
    assert demand() == before + 64 + 32
    assert record(default_server, a).json()["unique_tokens"] == 96  # b's context is gone


def test_continuum_fields_job_id_and_is_last_step_end_the_program(default_server):
    pid = new_id()
    chat(default_server, extra_body={"job_id": pid, "is_last_step": True})
    rec = record(default_server, pid).json()
    assert rec["status"] == "terminated" and rec["release_cause"] == "final"


def test_parent_id_header_is_recorded(default_server):
    child, parent = new_id(), new_id()
    chat(default_server, headers={"x-dynamo-session-id": child,
                                  "X-Dynamo-Parent-Session-ID": parent})
    rec = record(default_server, child).json()
    assert rec["parent_id"] == parent


def test_invalid_final_marker_is_400(default_server):
    reply = requests.post(f"{default_server.url}/generate", json={
        "text": "x", "program_id": new_id(), "is_last_step": "yes",
        "sampling_params": {"max_new_tokens": 1}}, timeout=60)
    assert reply.status_code == 400 and "is_last_step" in reply.json()["error"]["message"]


@pytest.mark.parametrize("header", ["X-Program-Id", "X-Dynamo-Session-ID",
                                    "x-claude-code-session-id", "session-id", "x-session-id"])
def test_every_header_id_source_tags_the_call(default_server, header):
    pid = new_id()
    raw = chat(default_server, headers={header: pid})
    assert raw.headers["x-program-id"] == pid
    assert raw.headers["x-program-id-source"] == f"header:{header.lower()}"
    assert record(default_server, pid).json()["steps"] == 1


def test_streaming_native_generate_is_tagged_and_accounted(default_server):
    pid = new_id()
    with requests.post(f"{default_server.url}/generate", headers={"X-Program-Id": pid}, json={
            "text": "stream me", "stream": True,
            "sampling_params": {"max_new_tokens": 6, "ignore_eos": True}},
            stream=True, timeout=60) as reply:
        assert reply.headers["x-program-id"] == pid
        events = [line for line in reply.iter_lines() if line.startswith(b"data:")]
    outputs = [json.loads(e[5:]) for e in events if e != b"data: [DONE]"]
    assert len(outputs) >= 2  # it streamed (SGLang may coalesce tokens under load)
    assert outputs[-1]["meta_info"]["completion_tokens"] == 6
    assert record(default_server, pid).json()["decode_tokens"] == 6


def test_resident_and_host_tokens_follow_the_tree_and_agree_with_a_recount(hicache_server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    pid = new_id()

    def call(ids, headers):
        return requests.post(f"{hicache_server.url}/generate", headers={**auth, **headers}, json={
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
        }, timeout=60).json()

    prompt = [600 + i for i in range(96)]  # 6 pages of 16
    call(prompt, {"X-Program-Id": pid})
    rec = record(hicache_server, pid, headers=auth).json()
    # 96 prompt + 3 outputs with KV = 99 tokens: 6 whole pages are in the tree.
    assert rec["resident_tokens"] == 96
    # This server's idle expiry is 2 s: a tool hint keeps the program through the calls below.
    requests.post(f"{hicache_server.url}/programs/{pid}/tool", headers=auth,
                  json={"event": "start", "expected_s": 60}, timeout=30)
    for i in range(5):  # an acting program's pages outrank untagged work: they stay
        call([1000 + 100 * i + j for j in range(300)], {})
    assert record(hicache_server, pid, headers=auth).json()["resident_tokens"] == 96
    requests.post(f"{hicache_server.url}/programs/{pid}/pause", headers=auth, timeout=30)
    for i in range(5):  # a paused program's pages go first: demoted to host memory
        call([(1200 + 150 * i + j) % 2000 + 3 for j in range(300)], {})
    rec = record(hicache_server, pid, headers=auth).json()
    assert rec["resident_tokens"] == 0 and rec["host_tokens"] == 96
    requests.post(f"{hicache_server.url}/programs/{pid}/resume", headers=auth, timeout=30)
    call(prompt + [7, 8], {"X-Program-Id": pid})  # loaded back from host memory
    rec = record(hicache_server, pid, headers=auth).json()
    assert rec["resident_tokens"] == 96
    requests.get(f"{hicache_server.url}/health_generate", timeout=60)
    time.sleep(3)  # let an idle memory check (and our recount) run
    log = hicache_server.log()
    assert "ThunderAgent residency recount: ok" in log
    assert "residency recount: MISMATCH" not in log


def test_live_recount_never_disagreed_with_the_event_kept_counters(default_server, hicache_server):
    for server in (default_server, hicache_server):
        requests.get(f"{server.url}/health_generate", timeout=60)
    time.sleep(3)
    for server in (default_server, hicache_server):
        log = server.log()
        assert "ThunderAgent residency recount: ok" in log
        assert "residency recount: MISMATCH" not in log


def test_dynamo_final_header_ends_the_program(default_server):
    pid = new_id()
    chat(default_server, headers={"X-Dynamo-Session-ID": pid, "X-Dynamo-Session-Final": "true"})
    rec = record(default_server, pid).json()
    assert rec["status"] == "terminated" and rec["release_cause"] == "final"


@pytest.mark.parametrize("ids", [[5, 99999], [5, -1]])
def test_out_of_vocabulary_input_ids_are_400_not_a_scheduler_crash(default_server, ids):
    reply = requests.post(f"{default_server.url}/generate", json={
        "input_ids": ids, "sampling_params": {"max_new_tokens": 1}}, timeout=60)
    assert reply.status_code == 400
    assert "not a token id of this model" in reply.text
    assert requests.get(f"{default_server.url}/health_generate", timeout=60).status_code == 200


@pytest.mark.parametrize("bad,shown", [(" x", "' ' at position 0"), ("x ", "' ' at position 1"),
                                       ("agent π", "' ' at position 5"),
                                       ("π", "'π' at position 0")])
def test_an_id_with_a_space_or_non_ascii_is_400_not_a_lost_reply(default_server, bad, shown):
    reply = requests.post(f"{default_server.url}/generate", json={
        "text": "x", "sampling_params": {"max_new_tokens": 1}, "program_id": bad}, timeout=60)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "body field 'program_id'"
    assert "visible ASCII" in error["message"] and shown in error["message"]


def test_an_id_with_slashes_reaches_every_route(default_server):
    pid = f"team/{new_id()}/a%2Fb"
    raw = chat(default_server, headers={"X-Program-Id": pid})
    assert raw.headers["x-program-id"] == pid
    quoted = requests.utils.quote(pid, safe="")
    url = f"{default_server.url}/programs/{quoted}"
    assert requests.get(url, timeout=30).json()["program_id"] == pid
    assert requests.get(f"{default_server.url}/profiles/{quoted}", timeout=30).status_code == 200
    hint = requests.post(f"{url}/tool", json={"event": "start", "expected_s": 5}, timeout=30)
    assert hint.status_code == 200 and hint.json()["tool_running"] is True
    assert requests.post(f"{url}/pause", timeout=30).json()["status"] == "paused"
    assert requests.post(f"{url}/resume", timeout=30).json()["status"] == "active"
    released = requests.post(f"{default_server.url}/programs/release",
                             json={"program_id": pid}, timeout=30)
    assert released.status_code == 200 and released.json()["status"] == "terminated"


@pytest.mark.parametrize("route", ["", "/pause", "/resume"])
def test_an_invalid_id_in_a_path_is_400_naming_it(default_server, route):
    method = requests.get if not route else requests.post
    reply = method(f"{default_server.url}/programs/a%20b{route}", timeout=30)
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("program id in the path must be a string of 1-256")


@pytest.mark.parametrize("body", [{"program_id": " x"}, {"program_id": None}])
def test_the_release_route_checks_the_id_like_every_other(default_server, body):
    reply = requests.post(f"{default_server.url}/programs/release", json=body, timeout=30)
    assert reply.status_code == 400
    assert "Traceback" not in reply.text and ".py" not in reply.text


@pytest.mark.parametrize("expected", ["-1", "NaN", "Infinity"])
def test_a_tool_hint_with_a_negative_or_non_finite_expected_time_is_400(default_server, expected):
    pid = new_id()
    chat(default_server, headers={"X-Program-Id": pid})
    reply = requests.post(f"{default_server.url}/programs/{pid}/tool", timeout=30,
                          data=f'{{"event": "start", "expected_s": {expected}}}',
                          headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    if expected == "-1":  # NaN and Infinity are refused by SGLang's request validation first
        assert "expected_s must be a finite number" in reply.json()["error"]
    assert requests.get(f"{default_server.url}/programs/{pid}", timeout=30).json()[
        "tool_running"] is False


def test_named_tools_are_learned_and_predicted_in_the_record(default_server):
    """Two acting phases under one tool name: the record of the third predicts their median;
    a bad name is a 400 that changes nothing; /metrics counts the phases by tool."""
    pid, tool = new_id(), f"pytest-{new_id()[-6:]}"
    url = f"{default_server.url}/programs/{pid}"
    chat(default_server, headers={"X-Program-Id": pid})
    for _ in range(2):
        hint = requests.post(f"{url}/tool", json={"event": "start", "tool": tool}, timeout=30)
        assert hint.json()["tool"] == tool
        time.sleep(0.3)
        chat(default_server, headers={"X-Program-Id": pid})
    started = requests.post(f"{url}/tool", json={"event": "start", "tool": tool}, timeout=30)
    rec = started.json()
    assert rec["tool"] == tool and 0.3 <= rec["tool_predicted_s"] <= rec["tool_predicted_p90_s"]
    assert rec["tool_predicted_p90_s"] < 30
    for bad in ("rm -rf /", "", "x" * 65, 7):
        reply = requests.post(f"{url}/tool", json={"event": "start", "tool": bad}, timeout=30)
        assert reply.status_code == 400 and "tool must be 1-64 characters" in reply.json()["error"]
    metrics = requests.get(f"{default_server.url}/metrics", timeout=30).text
    assert f'thunderagent_acting_phases_total{{tool="{tool}"}} 2.0' in metrics
    assert f'thunderagent_acting_seconds{{quantile="0.5",tool="{tool}"}}' in metrics
