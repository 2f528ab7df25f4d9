"""The pure lifecycle policy: exact decisions for TTL, idle TTL, paused programs, running cap."""

from thunderagent_sglang.sidecar.policy import (PAUSED, RUNNING, EnvView, GcDecision, GcLimits,
                                                LayerBook, ProgramBook, decide)


def env(env_id, program="p", state=RUNNING, created=0.0, used=0.0, busy=False):
    return EnvView(env_id, program, state, created, used, busy)


def test_no_limits_decide_nothing():
    envs = [env("a"), env("b", used=5)]
    assert decide(envs, ProgramBook(), 1e9, GcLimits()) == GcDecision()


def test_ttl_destroys_old_envs_even_busy_or_paused_program():
    programs = ProgramBook()
    programs.pause("p")
    envs = [env("old", created=0, busy=True), env("young", created=50)]
    got = decide(envs, programs, 100.0, GcLimits(ttl=100))
    assert got == GcDecision(destroy=(("old", "ttl"),))


def test_idle_ttl_destroys_only_idle_unbusy_envs_of_active_programs():
    envs = [env("idle", used=0), env("fresh", used=95), env("busy", used=0, busy=True)]
    got = decide(envs, ProgramBook(), 100.0, GcLimits(idle_ttl=10))
    assert got == GcDecision(destroy=(("idle", "idle"),))


def test_paused_program_is_waiting_not_idle():
    programs = ProgramBook()
    programs.pause("waiting")
    envs = [env("w", program="waiting", used=0), env("i", program="other", used=0)]
    got = decide(envs, programs, 100.0, GcLimits(idle_ttl=10))
    assert got.destroy == (("i", "idle"),)


def test_resume_restarts_the_idle_clock():
    programs = ProgramBook()
    programs.pause("p")
    programs.resume("p", now=95.0)
    envs = [env("e", used=0)]
    assert decide(envs, programs, 100.0, GcLimits(idle_ttl=10)).destroy == ()
    assert decide(envs, programs, 105.0, GcLimits(idle_ttl=10)).destroy == (("e", "idle"),)


def test_running_cap_pauses_paused_programs_first_then_lru_never_busy():
    programs = ProgramBook()
    programs.pause("sleeping")
    envs = [
        env("recent", used=50), env("oldest", used=1), env("busy-old", used=0, busy=True),
        env("of-paused", program="sleeping", used=90), env("older", used=2),
        env("already", state=PAUSED, used=0),
    ]
    got = decide(envs, programs, 100.0, GcLimits(max_running=2))
    # 5 running, cap 2: pause 3 -> the paused program's env, then LRU among unbusy ones.
    assert got.pause == ("of-paused", "oldest", "older")
    assert got.destroy == ()


def test_destroyed_envs_do_not_count_toward_the_cap():
    envs = [env("a", created=0, used=10), env("b", created=90, used=20)]
    got = decide(envs, ProgramBook(), 100.0, GcLimits(ttl=50, max_running=1))
    assert got == GcDecision(destroy=(("a", "ttl"),), pause=())


def test_layer_freed_when_last_user_goes_unless_kept_or_not_owned():
    book = LayerBook(keep=frozenset({"kept"}))
    for name, owned in (("snap", True), ("kept", True), ("user-image", False)):
        book.add(name, owned)
        book.ref(name, "e1")
        book.ref(name, "e2")
    assert book.unref("e1") == []
    assert book.count("snap") == 1
    assert book.unref("e2") == ["snap"]
    assert book.removable("kept") is False and book.removable("user-image") is False


def test_program_holder_keeps_its_snapshot_until_terminated():
    book = LayerBook()
    book.add("s", owned=True)
    book.ref("s", "program:p")
    book.ref("s", "env-1")
    assert book.unref("env-1") == []
    assert book.unref("program:p") == ["s"]
