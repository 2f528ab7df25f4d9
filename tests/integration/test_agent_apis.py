"""Program identity on the APIs coding agents speak, through the vendors' own Python SDKs (pinned
in the ``dev`` extra): the Anthropic Messages API (``/v1/messages``, Claude Code) with the
``anthropic`` SDK, and the OpenAI Responses API (``/v1/responses``, Codex) with the ``openai``
SDK, each with the header its agent sends. Every generating route gets the program's record,
``X-Program-Id`` on the answer, final markers, held calls; ``count_tokens`` reads the id and
creates no program.

One server for the module, with ``--enable-response-store`` (a ``previous_response_id`` chain
needs it; the test asserts the route is really on, as SGLang turns it off when its set-up
fails).
"""

from __future__ import annotations

import threading
import uuid

import anthropic
import openai
import pytest
import requests

from tests.integration.server import Server, wait_until

pytestmark = pytest.mark.server

# As the clients spell them (case does not matter): Claude Code 2.1.197, Codex 0.171.0 and
# the underscore spelling of earlier Codex releases (README, "Which client sends which id").
CLAUDE_CODE_HEADER = "X-Claude-Code-Session-Id"
CODEX_HEADER = "session-id"
OLD_CODEX_HEADER = "session_id"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server("agent-apis", ["--enable-response-store"], {},
                 tmp_path_factory.mktemp("agent-apis"))
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def record(server, pid) -> requests.Response:
    return requests.get(f"{server.url}/programs/{pid}", timeout=30)


def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def codex(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def served_model(server) -> str:
    """The Responses route checks the model's name (chat and messages take any)."""
    return requests.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"]


MESSAGES = [{"role": "user", "content": "List the files and run the tests."}]


def test_messages_with_claude_codes_session_header_are_one_program(server):
    pid = new_id("cc")
    client = claude(server)
    raw = client.messages.with_raw_response.create(
        model="demo", max_tokens=4, messages=MESSAGES, extra_headers={CLAUDE_CODE_HEADER: pid})
    assert raw.headers["x-program-id"] == pid
    assert raw.headers["x-program-id-source"] == f"header:{CLAUDE_CODE_HEADER.lower()}"
    assert raw.parse().usage.output_tokens == 4
    with client.messages.stream(model="demo", max_tokens=4, messages=MESSAGES,
                                extra_headers={CLAUDE_CODE_HEADER: pid}) as stream:
        text = "".join(stream.text_stream)
        assert stream.get_final_message().usage.output_tokens == 4
    assert isinstance(text, str)
    rec = record(server, pid).json()
    assert (rec["status"], rec["steps"], rec["in_flight"]) == ("active", 2, 0)
    assert rec["prefill_tokens_cached"] > 0  # the second call reused the first's prefix


def test_messages_take_an_id_from_the_body_and_a_final_marker(server):
    pid = new_id("cc-body")
    client = claude(server)
    client.messages.create(model="demo", max_tokens=2, messages=MESSAGES,
                           extra_body={"program_id": pid},
                           metadata={"user_id": "user-7"})
    client.messages.create(model="demo", max_tokens=2, messages=MESSAGES,
                           extra_body={"program_id": pid},
                           extra_headers={"X-Program-Final": "1"})
    rec = record(server, pid).json()
    assert (rec["status"], rec["release_cause"], rec["steps"]) == ("terminated", "final", 2)


def test_an_invalid_id_on_messages_is_a_400_the_sdk_reads(server):
    with pytest.raises(anthropic.BadRequestError) as err:
        claude(server).messages.create(model="demo", max_tokens=2, messages=MESSAGES,
                                       extra_headers={CLAUDE_CODE_HEADER: "has space"})
    assert err.value.status_code == 400 and CLAUDE_CODE_HEADER.lower() in str(err.value).lower()


def test_count_tokens_reads_the_id_and_creates_no_program(server):
    pid = new_id("cc-count")
    raw = claude(server).messages.with_raw_response.count_tokens(
        model="demo", messages=MESSAGES, extra_headers={CLAUDE_CODE_HEADER: pid})
    assert raw.parse().input_tokens > 0 and raw.headers["x-program-id"] == pid
    assert record(server, pid).status_code == 404
    with pytest.raises(anthropic.BadRequestError):
        claude(server).messages.count_tokens(model="demo", messages=MESSAGES,
                                             extra_headers={CLAUDE_CODE_HEADER: "a\tb"})


def test_a_paused_programs_messages_call_is_held_until_it_resumes(server):
    pid = new_id("cc-held")
    client = claude(server)
    client.messages.create(model="demo", max_tokens=2, messages=MESSAGES,
                           extra_headers={CLAUDE_CODE_HEADER: pid})
    assert requests.post(f"{server.url}/programs/{pid}/pause", timeout=30).status_code == 200
    box: list = []
    thread = threading.Thread(target=lambda: box.append(client.messages.create(
        model="demo", max_tokens=2, messages=MESSAGES,
        extra_headers={CLAUDE_CODE_HEADER: pid})), daemon=True)
    thread.start()
    wait_until(lambda: record(server, pid).json()["waiting"] == 1, f"{pid}'s call held")
    assert not box
    requests.post(f"{server.url}/programs/{pid}/resume", timeout=30)
    thread.join(60)
    assert box and box[0].usage.output_tokens == 2
    assert record(server, pid).json()["steps"] == 2


def test_the_responses_route_is_on(server):
    assert "Responses API (/v1/responses) disabled" not in server.log()


def test_a_responses_chain_with_codexs_session_header_is_one_growing_program(server):
    pid = new_id("codex")
    client = codex(server)
    cached, previous = [], None
    for turn in ("Run the tests.", "Fix the failing one.", "Run them again."):
        raw = client.responses.with_raw_response.create(
            model=served_model(server), input=turn, max_output_tokens=4, store=True,
            previous_response_id=previous, extra_headers={CODEX_HEADER: pid})
        assert raw.headers["x-program-id"] == pid
        response = raw.parse()
        previous = response.id
        cached.append(response.usage.input_tokens_details.cached_tokens)
    rec = record(server, pid).json()
    assert (rec["status"], rec["steps"]) == ("active", 3)
    assert cached[0] < cached[1] < cached[2]  # each turn reuses the whole previous context
    assert rec["prefill_tokens_cached"] == sum(cached)


def test_a_streamed_response_with_old_codexs_header_is_tagged_and_can_end_the_program(server):
    pid = new_id("codex-stream")
    client = codex(server)
    with client.responses.stream(model=served_model(server), input="Summarise.", max_output_tokens=4,
                                 extra_headers={OLD_CODEX_HEADER: pid,
                                                "X-Program-Final": "1"}) as stream:
        events = [event.type for event in stream]
    # Cut at max_output_tokens: the stream ends "incomplete", as the Responses API says.
    assert events[0] == "response.created" and events[-1] == "response.incomplete", events
    rec = record(server, pid).json()
    assert (rec["status"], rec["release_cause"], rec["steps"]) == ("terminated", "final", 1)


def test_chat_with_default_headers_and_extra_body_ids(server):
    header_pid, body_pid = new_id("chat-h"), new_id("chat-b")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused",
                           default_headers={"X-Program-Id": header_pid})
    client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=2)
    plain = codex(server)
    plain.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=2,
                                  extra_body={"program_id": body_pid})
    assert record(server, header_pid).json()["steps"] == 1
    assert record(server, body_pid).json()["steps"] == 1


def test_ollama_routes_are_tagged_too(server):
    pid = new_id("ollama")
    chat = requests.post(f"{server.url}/api/chat", headers={"X-Program-Id": pid}, json={
        "model": "demo", "messages": MESSAGES, "stream": False,
        "options": {"num_predict": 2}}, timeout=60)
    assert chat.status_code == 200, chat.text
    assert chat.headers["x-program-id"] == pid
    assert record(server, pid).json()["steps"] == 1
