"""Program identity extraction: precedence, validation, parents, final markers, flag parsing."""

from __future__ import annotations

import pytest

from thunderagent_sglang.program.identity import (
    DEFAULT_ID_SOURCES,
    MAX_ID_LENGTH,
    PARENT_HEADERS,
    Identity,
    InvalidFinalMarker,
    InvalidProgramId,
    extract_identity,
    names_program,
    parse_id_sources,
)

# One request mark per default source, in the same order, each with its own id.
HEADER_CASE = {
    "header:x-program-id": "X-Program-Id",
    "header:x-dynamo-session-id": "X-Dynamo-Session-ID",
    "header:x-claude-code-session-id": "X-Claude-Code-Session-Id",
    "header:session-id": "Session-Id",
    "header:session_id": "session_id",
    "header:x-session-id": "X-Session-Id",
}


def _mark(source: str, value):
    """(headers, body) carrying ``value`` in ``source``."""
    kind, _, name = source.partition(":")
    if kind == "header":
        return {HEADER_CASE[source]: value}, {}
    return {}, {name: value}


def _merge(*marks):
    headers, body = {}, {}
    for h, b in marks:
        headers.update(h)
        body.update(b)
    return headers, body


def test_default_sources_are_the_documented_order():
    assert DEFAULT_ID_SOURCES == (
        "header:x-program-id",
        "body:program_id",
        "body:job_id",
        "header:x-dynamo-session-id",
        "header:x-claude-code-session-id",
        "header:session-id",
        "header:session_id",
        "header:x-session-id",
    )
    assert PARENT_HEADERS == ("x-dynamo-parent-session-id", "x-parent-session-id", "x-claude-code-parent-agent-id")
    assert MAX_ID_LENGTH == 256


@pytest.mark.parametrize("source", DEFAULT_ID_SOURCES)
def test_each_default_source_alone(source):
    headers, body = _mark(source, "prog-1")
    assert extract_identity(headers, body) == Identity("prog-1", source, None, False, ())


@pytest.mark.parametrize("high,low", list(zip(DEFAULT_ID_SOURCES, DEFAULT_ID_SOURCES[1:])))
def test_precedence_adjacent_pairs(high, low):
    headers, body = _merge(_mark(high, "winner"), _mark(low, "loser"))
    assert extract_identity(headers, body) == Identity("winner", high, None, False, (low,))


@pytest.mark.parametrize("high,low", list(zip(DEFAULT_ID_SOURCES, DEFAULT_ID_SOURCES[1:])))
def test_same_id_in_two_sources_is_no_conflict(high, low):
    headers, body = _merge(_mark(high, "same"), _mark(low, "same"))
    assert extract_identity(headers, body) == Identity("same", high, None, False, ())


def test_all_sources_conflicts_in_order():
    marks = [_mark(src, f"id-{i}") for i, src in enumerate(DEFAULT_ID_SOURCES)]
    headers, body = _merge(*marks)
    body["job_id"] = "id-0"  # same as the winner: not a conflict
    ident = extract_identity(headers, body)
    assert ident.program_id == "id-0"
    assert ident.source == "header:x-program-id"
    assert ident.conflicts == (
        "body:program_id",
        "header:x-dynamo-session-id",
        "header:x-claude-code-session-id",
        "header:session-id",
        "header:session_id",
        "header:x-session-id",
    )


@pytest.mark.parametrize("name", ["x-program-id", "X-PROGRAM-ID", "X-Program-Id", "x-PrOgRaM-iD"])
def test_header_names_case_insensitive(name):
    assert extract_identity({name: "abc"}, None) == Identity("abc", "header:x-program-id", None, False, ())


def test_bytes_headers_accepted():
    ident = extract_identity({b"X-Program-Id": b"abc"}, None)
    assert ident == Identity("abc", "header:x-program-id", None, False, ())


def test_untagged():
    assert extract_identity({}, None) == Identity(None, None, None, False, ())
    assert extract_identity({"content-type": "application/json"}, {"model": "m"}) == Identity(
        None, None, None, False, ()
    )


def test_non_mapping_body_is_no_body():
    assert extract_identity({}, [{"program_id": "x"}]) == Identity(None, None, None, False, ())


def test_sglang_session_id_is_never_an_id():
    assert extract_identity({}, {"session_id": "sess-1"}) == Identity(None, None, None, False, ())
    ident = extract_identity({}, {"session_id": "sess-1", "program_id": "p"})
    assert ident == Identity("p", "body:program_id", None, False, ())
    with pytest.raises(ValueError, match="session_id"):
        extract_identity({}, {"session_id": "s"}, sources=("body:session_id",))


def test_null_body_value_is_absent():
    ident = extract_identity({"x-session-id": "low"}, {"program_id": None, "job_id": None})
    assert ident == Identity("low", "header:x-session-id", None, False, ())


def test_max_length_id_ok():
    pid = "a" * 256
    assert extract_identity({}, {"program_id": pid}).program_id == pid


def test_every_visible_ascii_character_is_allowed_slashes_included():
    pid = "".join(chr(c) for c in range(0x21, 0x7F))
    assert extract_identity({}, {"program_id": pid}).program_id == pid
    assert extract_identity({"x-program-id": "a/b%2Fc"}, None).program_id == "a/b%2Fc"


BAD_IDS = [
    ("", "empty string"),
    ("a" * 257, "257 characters"),
    ("\n", "got '\\n' at position 0"),
    ("ab\ncd", "got '\\n' at position 2"),
    ("\x00", "got '\\x00' at position 0"),
    ("a\tb", "got '\\t' at position 1"),
    (" x", "got ' ' at position 0"),
    ("x ", "got ' ' at position 1"),
    ("agent 7", "got ' ' at position 5"),
    ("π", "got 'π' at position 0"),
    ("a\x7f", "got '\\x7f' at position 1"),
    (7, "got int"),
    (1.5, "got float"),
    (["a"], "got list"),
    ({"a": 1}, "got dict"),
    (True, "got bool"),
    (False, "got bool"),
]


@pytest.mark.parametrize("value,problem", BAD_IDS)
def test_invalid_body_ids(value, problem):
    with pytest.raises(InvalidProgramId) as err:
        extract_identity({}, {"program_id": value})
    assert err.value.source == "body field 'program_id'"
    assert str(err.value).startswith("body field 'program_id' must be a string of 1-256 visible ASCII characters (0x21-0x7E: no spaces, control or non-ASCII characters), ")
    assert problem in str(err.value)
    assert isinstance(err.value, ValueError)


def test_invalid_int_message_exact():
    with pytest.raises(InvalidProgramId) as err:
        extract_identity({}, {"job_id": 42})
    assert str(err.value) == "body field 'job_id' must be a string of 1-256 visible ASCII characters (0x21-0x7E: no spaces, control or non-ASCII characters), got int"


@pytest.mark.parametrize("value,problem", [v for v in BAD_IDS if isinstance(v[0], str)])
def test_invalid_header_ids(value, problem):
    with pytest.raises(InvalidProgramId) as err:
        extract_identity({"x-program-id": value}, None)
    assert err.value.source == "header X-Program-Id"
    assert str(err.value).startswith("header X-Program-Id must be a string of 1-256 visible ASCII characters (0x21-0x7E: no spaces, control or non-ASCII characters), ")
    assert problem in str(err.value)


def test_invalid_lower_precedence_source_still_raises():
    with pytest.raises(InvalidProgramId) as err:
        extract_identity({"x-program-id": "good", "x-session-id": ""}, {"program_id": "good"})
    assert err.value.source == "header X-Session-Id"
    with pytest.raises(InvalidProgramId) as err:
        extract_identity({"x-program-id": "good"}, {"job_id": 3})
    assert err.value.source == "body field 'job_id'"


def test_invalid_source_not_in_sources_is_ignored():
    ident = extract_identity({"x-session-id": ""}, {"program_id": "p"}, sources=("body:program_id",))
    assert ident == Identity("p", "body:program_id", None, False, ())


@pytest.mark.parametrize("header", PARENT_HEADERS)
def test_parent_each_header(header):
    ident = extract_identity({header.upper(): "parent-1", "x-program-id": "child"}, None)
    assert ident == Identity("child", "header:x-program-id", "parent-1", False, ())


def test_parent_precedence():
    headers = {h: f"p{i}" for i, h in enumerate(PARENT_HEADERS)}
    assert extract_identity(headers, None).parent_id == "p0"
    del headers[PARENT_HEADERS[0]]
    assert extract_identity(headers, None).parent_id == "p1"


def test_parent_without_id():
    assert extract_identity({"x-parent-session-id": "p"}, None) == Identity(None, None, "p", False, ())


@pytest.mark.parametrize("value", ["", "\n", "a" * 257])
def test_invalid_parent_raises(value):
    with pytest.raises(InvalidProgramId) as err:
        extract_identity({"X-Parent-Session-Id": value, "x-program-id": "c"}, None)
    assert err.value.source == "header X-Parent-Session-Id"
    assert "X-Parent-Session-Id" in str(err.value)


@pytest.mark.parametrize("header", ["X-Program-Final", "X-Dynamo-Session-Final", "x-program-final"])
@pytest.mark.parametrize("value,final", [("1", True), ("true", True), ("TRUE", True), ("True", True),
                                         ("0", False), ("false", False), ("False", False)])
def test_final_headers(header, value, final):
    ident = extract_identity({"x-program-id": "p", header: value}, None)
    assert ident == Identity("p", "header:x-program-id", None, final, ())


@pytest.mark.parametrize("header", ["X-Program-Final", "X-Dynamo-Session-Final"])
@pytest.mark.parametrize("value", ["maybe", "", "yes", "2"])
def test_final_header_garbage(header, value):
    with pytest.raises(InvalidFinalMarker) as err:
        extract_identity({"x-program-id": "p", header: value}, None)
    assert err.value.source == "header " + header
    assert header in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("value,final", [(True, True), (False, False), (None, False)])
def test_final_body_is_last_step(value, final):
    ident = extract_identity({}, {"job_id": "j", "is_last_step": value})
    assert ident == Identity("j", "body:job_id", None, final, ())


@pytest.mark.parametrize("value", ["true", 1, 0, [], "yes"])
def test_final_body_garbage(value):
    with pytest.raises(InvalidFinalMarker) as err:
        extract_identity({}, {"job_id": "j", "is_last_step": value})
    assert err.value.source == "body field 'is_last_step'"
    assert str(err.value).startswith("body field 'is_last_step' must be true or false, got ")


def test_final_any_marker_wins():
    ident = extract_identity({"X-Program-Final": "0", "X-Dynamo-Session-Final": "1"}, {"is_last_step": False})
    assert ident.final is True


def test_final_without_id_is_kept():
    assert extract_identity({"X-Program-Final": "1"}, None) == Identity(None, None, None, True, ())


def test_parse_id_sources_defaults_roundtrip():
    assert parse_id_sources(",".join(DEFAULT_ID_SOURCES)) == DEFAULT_ID_SOURCES


def test_parse_id_sources_aliases_and_forms():
    assert parse_id_sources("x-program-id, program_id ,job_id") == (
        "header:x-program-id",
        "body:program_id",
        "body:job_id",
    )
    assert parse_id_sources("Header:X-My-Trace,body:agent_run,session-id,X-Session-Id") == (
        "header:x-my-trace",
        "body:agent_run",
        "header:session-id",
        "header:x-session-id",
    )
    assert parse_id_sources("job_id,") == ("body:job_id",)


def test_custom_source_order():
    sources = parse_id_sources("job_id,x-program-id,header:x-agent")
    headers = {"X-Program-Id": "from-header", "X-Agent": "agent"}
    body = {"job_id": "from-job", "program_id": "ignored-source"}
    ident = extract_identity(headers, body, sources)
    assert ident == Identity("from-job", "body:job_id", None, False, ("header:x-program-id", "header:x-agent"))
    ident = extract_identity({"x-agent": "a", "x-session-id": "s"}, {"program_id": "p"}, sources)
    assert ident == Identity("a", "header:x-agent", None, False, ())


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "at least one"),
        (" , ,", "at least one"),
        ("program-id", "unknown id source 'program-id'"),
        ("bogus", "unknown id source 'bogus'"),
        ("body:session_id", "SGLang's own session field"),
        ("session_id", "SGLang's own session field"),
        ("x-program-id,body:session_id", "SGLang's own session field"),
        ("query:x", "must be 'header:NAME' or 'body:FIELD'"),
        ("header:", "must be 'header:NAME' or 'body:FIELD'"),
        ("body:", "must be 'header:NAME' or 'body:FIELD'"),
        ("header:bad name", "must be 'header:NAME' or 'body:FIELD'"),
        ("x-program-id,header:X-Program-Id", "listed twice"),
    ],
)
def test_parse_id_sources_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_id_sources(text)


def test_module_imports_no_sglang_or_web_framework():
    import subprocess
    import sys

    code = (
        "import sys, thunderagent_sglang.program.identity\n"
        "bad = [m for m in ('sglang', 'fastapi', 'starlette', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_program_priority_header_is_an_integer():
    ident = extract_identity({"X-Program-Id": "p", "X-Program-Priority": " -3 "}, None)
    assert ident == Identity("p", "header:x-program-id", None, False, (), -3)
    assert extract_identity({"X-Program-Id": "p"}, None).priority is None


@pytest.mark.parametrize("raw", ["high", "1.5", "", str(1 << 31)])
def test_bad_program_priority_is_refused_with_the_rule(raw):
    with pytest.raises(InvalidFinalMarker) as exc:
        extract_identity({"X-Program-Id": "p", "X-Program-Priority": raw}, None)
    assert str(exc.value) == f"X-Program-Priority must be an integer in [-2^31, 2^31), got {raw!r}"


def test_names_program_reads_only_header_sources_case_insensitively():
    assert names_program({"X-Claude-Code-Session-Id": "cc-1"}, "cc-1")
    assert names_program({"session_id": "cx-1"}, "cx-1")
    assert not names_program({"X-Program-Id": "other"}, "cc-1")
    assert not names_program({}, "cc-1")
    # a body source is never a claim in headers
    assert not names_program({"program_id": "cc-1"}, "cc-1", ("body:program_id",))


def test_a_routers_held_seconds_are_read_for_a_tagged_call():
    ident = extract_identity({"X-Program-Id": "p", "X-ThunderAgent-Held-S": " 12.5 "}, None)
    assert ident == Identity("p", "header:x-program-id", None, False, (), None, 12.5)
    assert extract_identity({"X-Program-Id": "p"}, None).held_s is None
    assert extract_identity({"X-ThunderAgent-Held-S": "3"}, None).held_s is None  # untagged


@pytest.mark.parametrize("raw", ["-1", "nan", "inf", "soon", "", "86401"])
def test_bad_held_seconds_are_refused(raw):
    with pytest.raises(InvalidFinalMarker) as exc:
        extract_identity({"X-Program-Id": "p", "X-ThunderAgent-Held-S": raw}, None)
    assert str(exc.value) == ("X-ThunderAgent-Held-S must be a number of seconds in "
                              f"[0, 86400], got {raw!r}")
