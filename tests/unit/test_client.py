"""thunderagent_sglang.client against a tiny local HTTP server that records what it is sent."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

from thunderagent_sglang import client as ta_client
from thunderagent_sglang.client import AsyncProgram, Program, program_endpoint, program_id_of

API_KEY = "sk-test-key"
FAIL_ID = "release-fails"  # the fake server answers 500 when asked to release this program


class Recorder:
    def __init__(self):
        self.requests: list[dict] = []
        self.released: set[str] = set()
        self.lock = threading.Lock()

    def add(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def paths(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


def _chat_completion() -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "demo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def _generate_one(text: str) -> dict:
    return {"text": " Paris", "meta_info": {
        "id": "rid-1", "prompt_tokens": 5, "completion_tokens": 1, "cached_tokens": 0,
        "finish_reason": {"type": "stop"},
        # [logprob, token id, token text]; the first entry's text never ends the prompt (no healing)
        "input_token_logprobs": [[-0.5, 11, "\x00"], [-0.25, 12, "b"], [-0.125 * (1 + len(text) % 3), 13, "c"]],
        "output_token_logprobs": []}}


def make_handler(rec: Recorder):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _record(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            entry = {"method": self.command, "path": self.path.split("?")[0],
                     "headers": {k.lower(): v for k, v in self.headers.items()},
                     "body": json.loads(raw) if raw else None}
            rec.add(entry)
            return entry

        def _send(self, status: int, obj) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            entry = self._record()
            if entry["path"] == "/get_model_info":
                self._send(200, {"model_path": "demo", "is_generation": True})
            else:
                self._send(404, {"error": "no route"})

        def do_POST(self):
            entry = self._record()
            path, body = entry["path"], entry["body"] or {}
            if path == "/v1/chat/completions":
                self._send(200, _chat_completion())
            elif path == "/programs/release":
                pid = body.get("program_id")
                if pid == FAIL_ID:
                    self._send(500, {"error": "boom"})
                    return
                with rec.lock:
                    known = pid not in rec.released
                    rec.released.add(pid)
                if known:
                    self._send(200, {"program_id": pid, "status": "terminated"})
                else:
                    self._send(404, {"error": f"unknown program {pid!r}"})
            elif path == "/generate":
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for text in (" Pa", " Paris"):
                        chunk = {"text": text, "meta_info": _generate_one(text)["meta_info"]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    return  # HTTP/1.0: the connection closes
                prompts = body.get("text", body.get("input_ids"))
                if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int):
                    self._send(200, [_generate_one(str(p)) for p in prompts])
                else:
                    self._send(200, _generate_one(str(prompts)))
            elif path == "/flush_cache":
                self._send(200, {})
            else:
                self._send(404, {"error": "no route"})

    return Handler


@pytest.fixture
def server():
    rec = Recorder()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(rec))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield rec
    finally:
        httpd.shutdown()
        httpd.server_close()


def _openai(rec: Recorder, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=rec.url + "/v1", api_key=API_KEY, max_retries=0, **kw)


def _chat(c) -> None:
    c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello"}])


# --- ids -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["", "x" * 257, "a\nb", "tab\there", "\x00", 7, b"bytes",
                                 " x", "é1"])
def test_invalid_program_ids_are_refused(server, bad):
    with pytest.raises(ValueError, match="1-256 visible ASCII characters"):
        Program(_openai(server), bad)
    with pytest.raises(ValueError, match="parent_id"):
        Program(_openai(server), "ok", parent_id=bad)
    with pytest.raises(ValueError):
        AsyncProgram(openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY), bad)


def test_valid_ids_at_the_limits_and_a_fresh_default(server):
    assert Program(_openai(server), "x" * 256).program_id == "x" * 256
    assert Program(_openai(server), "a/b:c~1").program_id == "a/b:c~1"
    a, b = Program(_openai(server)), Program(_openai(server))
    assert len(a.program_id) == 32 and int(a.program_id, 16) >= 0 and a.program_id != b.program_id


# --- OpenAI client ---------------------------------------------------------------------------

def test_every_chat_call_carries_the_program_id_and_the_original_client_stays_untagged(server):
    base = _openai(server, default_headers={"X-Custom": "kept"})
    program = Program(base, "agent-7")
    _chat(program.client)
    _chat(program.client)
    _chat(base)
    calls = server.paths("/v1/chat/completions")
    assert [c["headers"].get("x-program-id") for c in calls] == ["agent-7", "agent-7", None]
    assert all(c["headers"]["x-custom"] == "kept" for c in calls)
    assert all(c["headers"]["authorization"] == f"Bearer {API_KEY}" for c in calls)
    assert all("x-parent-session-id" not in c["headers"] and "x-program-final" not in c["headers"]
               for c in calls)
    assert program.client is not base and "x-program-id" not in {k.lower() for k in base.default_headers}


def test_final_call_headers_mark_only_that_call(server):
    program = Program(_openai(server), "agent-final")
    assert program.final_call_headers() == {"X-Program-Final": "1"}
    _chat(program.client)
    program.client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "bye"}],
                                           extra_headers=program.final_call_headers())
    calls = server.paths("/v1/chat/completions")
    assert [c["headers"].get("x-program-final") for c in calls] == [None, "1"]
    assert [c["headers"]["x-program-id"] for c in calls] == ["agent-final"] * 2


def test_parent_id_is_sent_as_x_parent_session_id(server):
    program = Program(_openai(server), "child", parent_id="parent-1")
    _chat(program.client)
    (call,) = server.paths("/v1/chat/completions")
    assert call["headers"]["x-program-id"] == "child"
    assert call["headers"]["x-parent-session-id"] == "parent-1"


def test_release_posts_the_id_with_the_bearer_key_and_is_idempotent(server):
    program = Program(_openai(server), "agent-rel")
    assert program.release() == {"program_id": "agent-rel", "status": "terminated"}
    assert program.release() is None  # no second request
    (call,) = server.paths("/programs/release")
    assert call["method"] == "POST" and call["body"] == {"program_id": "agent-rel"}
    assert call["headers"]["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", ""])
def test_release_url_is_the_server_root(server, suffix):
    c = openai.OpenAI(base_url=server.url + suffix, api_key=API_KEY)
    assert Program(c, "root-" + suffix).release() is not None
    assert len(server.paths("/programs/release")) == 1


def test_release_of_an_already_ended_program_returns_none(server):
    server.released.add("ended-by-final")
    program = Program(_openai(server), "ended-by-final")
    assert program.release() is None
    assert program.released and len(server.paths("/programs/release")) == 1
    assert program.release() is None and len(server.paths("/programs/release")) == 1


def test_release_errors_are_clear(server):
    program = Program(_openai(server), FAIL_ID)
    with pytest.raises(RuntimeError, match=r"HTTP 500.*boom"):
        program.release()
    assert not program.released  # may be retried


def test_release_transport_error_is_a_runtime_error():
    c = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key=API_KEY)  # discard port: refused
    with pytest.raises(RuntimeError, match="releasing program 'x'"):
        Program(c, "x").release()


def test_context_manager_releases_once(server):
    with Program(_openai(server), "cm") as program:
        _chat(program.client)
    assert program.released
    assert [r["body"] for r in server.paths("/programs/release")] == [{"program_id": "cm"}]
    assert program.release() is None
    assert len(server.paths("/programs/release")) == 1


def test_context_manager_releases_on_exception_and_propagates_it(server):
    with pytest.raises(KeyError, match="tool failed"):
        with Program(_openai(server), "cm-exc") as program:
            _chat(program.client)
            raise KeyError("tool failed")
    assert [r["body"] for r in server.paths("/programs/release")] == [{"program_id": "cm-exc"}]


def test_a_failing_release_never_masks_the_original_exception(server):
    with pytest.raises(KeyError, match="original"):
        with Program(_openai(server), FAIL_ID):
            raise KeyError("original")
    with pytest.raises(RuntimeError, match="HTTP 500"):  # without an exception it is reported
        with Program(_openai(server), FAIL_ID):
            pass


def test_no_bearer_header_without_an_api_key(server):
    program = Program(openai.OpenAI(base_url=server.url + "/v1", api_key=""), "nokey")
    program.release()
    (call,) = server.paths("/programs/release")
    assert "authorization" not in call["headers"]


def test_async_program(server):
    async def main():
        base = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
        async with AsyncProgram(base, "async-1", parent_id="p") as program:
            assert AsyncProgram.final_call_headers() == {"X-Program-Final": "1"}
            await program.client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}])
            await program.client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}],
                extra_headers=program.final_call_headers())
        assert program.released and await program.release() is None
        with pytest.raises(ValueError, match="boom"):
            async with AsyncProgram(base, "async-2"):
                raise ValueError("boom")
        missing = AsyncProgram(base, "async-2")  # released above: 404
        assert await missing.release() is None
        with pytest.raises(RuntimeError, match="HTTP 500"):
            await AsyncProgram(base, FAIL_ID).release()

    asyncio.run(main())
    calls = server.paths("/v1/chat/completions")
    assert [(c["headers"]["x-program-id"], c["headers"]["x-parent-session-id"],
             c["headers"].get("x-program-final")) for c in calls] == [("async-1", "p", None),
                                                                      ("async-1", "p", "1")]
    releases = server.paths("/programs/release")
    assert [r["body"]["program_id"] for r in releases] == ["async-1", "async-2", "async-2", FAIL_ID]
    assert all(r["headers"]["authorization"] == f"Bearer {API_KEY}" for r in releases)


# --- SGLang frontend -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sgl():
    import sglang

    return sglang


def _program_ids(rec: Recorder, path: str | None = None) -> list:
    return [r["headers"].get("x-program-id") for r in rec.requests
            if path is None or r["path"] == path]


def test_the_stand_in_accepts_every_parameter_of_the_frontends_http_request(sgl):
    import sglang.utils

    ours = inspect.signature(ta_client.sglang_program.make_http_request({}))
    theirs = inspect.signature(sglang.utils.http_request)
    assert set(theirs.parameters) <= set(ours.parameters)


def test_tagging_makes_no_request_and_leaves_the_endpoint_alone(server, sgl):
    backend = sgl.RuntimeEndpoint(server.url)
    assert _program_ids(server) == [None]  # model info, untagged
    handle = program_endpoint(backend, "agent-7")
    tagged = handle.endpoint
    assert len(server.requests) == 1
    assert isinstance(tagged, type(backend)) and type(backend) is sgl.RuntimeEndpoint
    assert program_id_of(tagged) == "agent-7" and program_id_of(backend) is None
    assert tagged.model_info == backend.model_info and tagged.get_model_name() == "demo"


def test_sgl_function_requests_carry_the_header_and_an_untagged_endpoint_does_not(server, sgl):
    @sgl.function
    def qa(s, question):
        s += "Q: " + question + "\n"
        s += "A:" + sgl.gen("answer", max_tokens=4)
        s += " Sure? " + sgl.select("sure", choices=["yes", "no"])

    backend = sgl.RuntimeEndpoint(server.url, api_key=API_KEY)
    other = sgl.RuntimeEndpoint(server.url)
    server.clear()
    with program_endpoint(backend, "agent-7", parent_id="boss") as tagged_backend:
        state = qa.run(question="Capital of France?", backend=tagged_backend)
        assert state["answer"] == " Paris" and state["sure"] in ("yes", "no")
        tagged_backend.cache_prefix("Q: shared prefix")
        tagged_backend.flush_cache()
        generate_calls = server.paths("/generate")
        # gen, then select's prefix call and its logprob call (a list of prompts), then cache_prefix
        assert len(generate_calls) >= 4
        assert any(isinstance(c["body"]["text"], list) and c["body"].get("return_logprob")
                   for c in generate_calls)
        assert _program_ids(server) == ["agent-7"] * len(server.requests)
        assert all(r["headers"]["x-parent-session-id"] == "boss" for r in server.requests)
        assert all(r["headers"]["authorization"] == f"Bearer {API_KEY}" for r in server.requests)
        n_tagged = len(server.requests)
        # the same frontend program on the original endpoint and on another one: untagged
        qa.run(question="Untagged?", backend=backend)
        qa.run(question="Other?", backend=other)
        backend.cache_prefix("p")
        assert len(server.requests) > n_tagged
        assert _program_ids(server)[n_tagged:] == [None] * (len(server.requests) - n_tagged)
        assert all("x-parent-session-id" not in r["headers"] for r in server.requests[n_tagged:])
        assert not server.paths("/programs/release")
    (release,) = server.paths("/programs/release")
    assert release["body"] == {"program_id": "agent-7"}
    assert release["headers"]["authorization"] == f"Bearer {API_KEY}"


def test_streaming_generation_is_tagged(server, sgl):
    @sgl.function
    def story(s):
        s += "Once" + sgl.gen("rest", max_tokens=4)

    backend = sgl.RuntimeEndpoint(server.url)
    server.clear()
    with program_endpoint(backend, "stream-1") as tagged:
        state = story.run(backend=tagged, stream=True)
        pieces = list(state.text_iter("rest"))
        assert "".join(pieces) == " Paris"
    streamed = [c for c in server.paths("/generate") if c["body"].get("stream")]
    assert streamed and all(c["headers"]["x-program-id"] == "stream-1" for c in streamed)
    assert _program_ids(server, "/generate") == ["stream-1"] * len(server.paths("/generate"))


def test_run_batch_threads_and_two_programs_do_not_mix(server, sgl):
    @sgl.function
    def ask(s, q):
        s += "Common system prompt for everyone. " + q + sgl.gen("a", max_tokens=2)

    backend = sgl.RuntimeEndpoint(server.url)
    server.clear()
    a, b = program_endpoint(backend, "prog-a"), program_endpoint(backend, "prog-b")
    ask.run_batch([{"q": "1"}, {"q": "2"}, {"q": "3"}], backend=a.endpoint, num_threads=3)
    n = len(server.requests)
    ask.run(q="4", backend=b.endpoint)
    assert n >= 3 and _program_ids(server)[:n] == ["prog-a"] * n
    assert _program_ids(server)[n:] == ["prog-b"] * (len(server.requests) - n)
    assert a.release()["program_id"] == "prog-a" and b.release()["program_id"] == "prog-b"


def test_constructing_through_the_tagged_class_tags_the_model_info_request(server, sgl):
    tagged = program_endpoint(sgl.RuntimeEndpoint(server.url), "agent-ctor").endpoint
    server.clear()
    again = type(tagged)(server.url)
    assert _program_ids(server, "/get_model_info") == ["agent-ctor"]
    assert program_id_of(again) == "agent-ctor" and again.model_info["model_path"] == "demo"


def test_retagging_and_passing_the_handle_or_a_runtime_like_object(server, sgl):
    backend = sgl.RuntimeEndpoint(server.url)
    first = program_endpoint(backend, "first")
    second = program_endpoint(first, "second")  # a handle has .endpoint, as sgl.Runtime does
    third = program_endpoint(first.endpoint, "third")
    server.clear()
    for handle in (first, second, third):
        handle.endpoint.cache_prefix("x")
    assert _program_ids(server) == ["first", "second", "third"]


def test_endpoint_release_404_error_and_exception_paths(server, sgl):
    backend = sgl.RuntimeEndpoint(server.url)
    server.released.add("gone")
    assert program_endpoint(backend, "gone").release() is None
    with pytest.raises(KeyError, match="inner"):
        with program_endpoint(backend, FAIL_ID):
            raise KeyError("inner")
    with pytest.raises(RuntimeError, match="HTTP 500"):
        program_endpoint(backend, FAIL_ID).release()
    handle = program_endpoint(backend)
    assert len(handle.program_id) == 32
    with pytest.raises(ValueError):
        program_endpoint(backend, "bad\nid")
    release_calls = server.paths("/programs/release")
    assert [r["body"]["program_id"] for r in release_calls] == ["gone", FAIL_ID, FAIL_ID]
    assert all("authorization" not in r["headers"] for r in release_calls)  # endpoint has no api key


def test_a_backend_without_http_request_is_refused():
    class NotAnEndpoint:
        base_url = "http://127.0.0.1:1"

        def generate(self, s, sampling_params):
            return "", {}

    with pytest.raises(TypeError, match="Program instead"):
        program_endpoint(NotAnEndpoint(), "x")


# --- import hygiene --------------------------------------------------------------------------

def test_the_client_package_imports_no_sglang():
    package = Path(ta_client.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] == "sglang"], path
    import subprocess

    code = "import thunderagent_sglang.client, sys; print('sglang' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
