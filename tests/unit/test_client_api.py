"""Unit tests of actorsched.Client against a scripted fake coordinator (a real ZeroMQ ROUTER)."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from test_client_fake import FakeCoordinator, fake  # noqa: F401  (fixture)

from actorsched import protocol, security
from actorsched.client import PRIORITY_MAX, PRIORITY_MIN, SUBMIT_CHUNK, Client, InvalidTask, TaskHandle
from actorsched.errors import (
    ActorschedError,
    ConnectionFailed,
    SubmitRejected,
    TaskFailed,
    TaskNotFound,
    Timeout,
)
from actorsched.protocol import ErrorInfo, Message, TaskInfo

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def client(fake: FakeCoordinator) -> Iterator[Client]:  # noqa: F811
    with Client(fake.endpoint, timeout_s=2.0) as connected:
        yield connected


def silent(_fake: FakeCoordinator, _message: Message) -> list[Message] | None:
    return None


# ------------------------------------------------------------------ submit


def test_submit_sends_one_spec_and_returns_a_handle_once_acknowledged(fake: FakeCoordinator,  # noqa: F811
                                                                        client: Client) -> None:
    handle = client.submit("actorsched.tasks:add", 1, 2, priority=-5, task_id="t1", deps=["t0"],
                           timeout_s=3, max_attempts=2, retry_on=["OSError"], tags=["gpu"], scale=2)
    assert isinstance(handle, TaskHandle) and handle.task_id == "t1"
    submit = fake.next_of(protocol.Submit)
    (spec,) = submit.tasks
    assert spec == protocol.TaskSpec("t1", "actorsched.tasks:add", [1, 2], {"scale": 2}, -5, ["t0"], 3.0, 2,
                                     ["OSError"], ["gpu"])


def test_submit_generates_a_uuid_task_id_when_none_is_given(client: Client) -> None:
    first = client.submit("actorsched.tasks:noop")
    second = client.submit("actorsched.tasks:noop")
    assert len(first.task_id) == 32 and first.task_id != second.task_id


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"name": ""}, "package.module:function"),
    ({"name": "no_colon"}, "package.module:function"),
    ({"name": "a.b:"}, "package.module:function"),
    ({"priority": PRIORITY_MAX + 1}, "priority"),
    ({"priority": PRIORITY_MIN - 1}, "priority"),
    ({"priority": True}, "priority"),
    ({"priority": 1.5}, "priority"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"timeout_s": float("nan")}, "timeout_s"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"task_id": ""}, "task id"),
    ({"deps": "t0"}, "deps"),
    ({"task_id": "same", "deps": ["same"]}, "itself"),
])
def test_invalid_submit_raises_before_anything_is_sent(fake: FakeCoordinator, client: Client,  # noqa: F811
                                                       kwargs: dict[str, object], fragment: str) -> None:
    fields: dict[str, object] = {"name": "actorsched.tasks:noop", **kwargs}
    name = fields.pop("name")
    with pytest.raises(InvalidTask, match=fragment) as caught:
        client.submit(name, **fields)  # type: ignore[arg-type]
    assert isinstance(caught.value, SubmitRejected) and isinstance(caught.value, ValueError)
    with pytest.raises(queue.Empty):
        fake.received.get_nowait()


def test_unpackable_args_name_the_task_and_nothing_is_sent(fake: FakeCoordinator,  # noqa: F811
                                                           client: Client) -> None:
    with pytest.raises(InvalidTask, match="args of task 'bad'"):
        client.submit("actorsched.tasks:echo", object(), task_id="bad")
    with pytest.raises(InvalidTask, match="kwargs of task 'bad2'.*keys must be strings"):
        client.submit("actorsched.tasks:echo", task_id="bad2", mapping={1: "x"})
    with pytest.raises(InvalidTask, match="args of task 'bad3'.*keys must be strings"):
        client.submit("actorsched.tasks:echo", {1: "x"}, task_id="bad3")
    with pytest.raises(queue.Empty):
        fake.received.get_nowait()


@pytest.mark.parametrize(("args", "kwargs", "field"), [
    ([msgpack.ExtType(1, b"x")], {}, "args"),
    ([msgpack.Timestamp(1)], {}, "args"),
    ([{"deep": [1, msgpack.ExtType(7, b"")]}], {}, "args"),
    ([], {"when": msgpack.Timestamp(5)}, "kwargs"),
], ids=["ext", "timestamp", "nested", "kwarg"])
def test_a_msgpack_extension_value_is_invalid_task_before_anything_is_sent(
        fake: FakeCoordinator, client: Client, args: list[Any], kwargs: dict[str, Any], field: str) -> None:  # noqa: F811
    """msgpack packs them but the coordinator drops the frame: the client waited out its timeout and said
    "is it running?".  Now it says what is wrong, at once."""
    with pytest.raises(InvalidTask, match=f"{field} of task 'ext' .*extension value"):
        client.submit("actorsched.tasks:echo", *args, task_id="ext", **kwargs)
    with pytest.raises(InvalidTask, match=f"{field} of task 'ext2' .*extension value"):
        client.submit_many([{"name": "actorsched.tasks:echo", "task_id": "ext2", "args": args, "kwargs": kwargs}])
    with pytest.raises(queue.Empty):
        fake.received.get_nowait()


def test_submit_many_validates_everything_first_then_sends_pipelined_chunks(fake: FakeCoordinator,  # noqa: F811
                                                                            client: Client) -> None:
    specs: list[protocol.TaskSpec | dict[str, object]] = [
        {"name": "actorsched.tasks:echo", "args": [i]} for i in range(2 * SUBMIT_CHUNK + 5)]
    with pytest.raises(InvalidTask, match="priority"):
        client.submit_many([*specs, {"name": "actorsched.tasks:echo", "priority": "high"}])
    with pytest.raises(queue.Empty):
        fake.received.get_nowait()
    specs.append(protocol.TaskSpec("own-id", "actorsched.tasks:noop"))
    handles = client.submit_many(specs)
    assert len(handles) == len(specs) and handles[-1].task_id == "own-id"
    sizes = [len(fake.next_of(protocol.Submit).tasks) for _ in range(3)]
    assert sizes == [SUBMIT_CHUNK, SUBMIT_CHUNK, 6]
    assert len({h.task_id for h in handles}) == len(handles)


def test_submit_many_rejects_unknown_fields_and_missing_names(client: Client) -> None:
    with pytest.raises(InvalidTask, match="unknown task field.*'prio'"):
        client.submit_many([{"name": "a.b:c", "prio": 1}])
    with pytest.raises(InvalidTask, match="no 'name'"):
        client.submit_many([{"args": [1]}])


def test_queue_full_error_reply_raises_submit_rejected_naming_it(fake: FakeCoordinator,  # noqa: F811
                                                                client: Client) -> None:
    fake.handler = lambda f, m: [protocol.ErrorReply(  # type: ignore[attr-defined]
        m.request_id, "queue-full", "1000000 tasks pending, max_pending_tasks=1000000")]
    with pytest.raises(SubmitRejected, match="queue-full.*1000000 tasks pending.*max_pending_tasks.*setting it names"):
        client.submit("actorsched.tasks:noop")


def test_a_rejected_chunk_says_how_many_other_tasks_were_acknowledged(fake: FakeCoordinator,  # noqa: F811
                                                                     client: Client) -> None:
    def reject_second(f: FakeCoordinator, message: Message) -> list[Message] | None:
        assert isinstance(message, protocol.Submit)
        if message.tasks[0].args == [SUBMIT_CHUNK]:
            return [protocol.ErrorReply(message.request_id, "bad-request", "no")]
        return FakeCoordinator.default_handler(f, message)
    fake.handler = reject_second
    with pytest.raises(SubmitRejected, match=f"rejected 3 task.*bad-request.*{SUBMIT_CHUNK} of {SUBMIT_CHUNK + 3}"):
        client.submit_many([{"name": "a.b:c", "args": [i]} for i in range(SUBMIT_CHUNK + 3)])


# ------------------------------------------------------------------ connection


def test_no_answer_raises_connection_failed_quickly_naming_the_endpoint(fake: FakeCoordinator) -> None:  # noqa: F811
    fake.handler = silent
    with Client(fake.endpoint, timeout_s=0.2) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match=f"no answer from coordinator at {fake.endpoint} within 0.2 s"):
            client.stats()
        assert time.monotonic() - started < 1.5


def test_nothing_listening_raises_connection_failed(unused_endpoint: str) -> None:
    with Client(unused_endpoint, timeout_s=0.2) as client, pytest.raises(ConnectionFailed, match="is it running"):
        client.query("t1")


def test_the_errors_for_a_coordinator_that_does_not_answer_name_the_installed_command(
        fake: FakeCoordinator, unused_endpoint: str) -> None:  # noqa: F811
    """bin/coordinator exists only in a checkout; an installed package has the actorsched-coordinator command."""
    fake.handler = silent
    errors = []
    with Client(fake.endpoint, timeout_s=0.2) as client, pytest.raises(ConnectionFailed) as caught:
        client.stats()  # connected, no answer
    errors.append(str(caught.value))
    with Client(unused_endpoint, timeout_s=0.2) as client, pytest.raises(ConnectionFailed) as caught:
        client.wait_connected(0.2)  # nothing accepts a connection
    errors.append(str(caught.value))
    for text in errors:
        assert "Start it with actorsched-coordinator (bin/coordinator in a checkout)" in text, text
        assert "CURVE" not in text and "key" not in text, text  # no keys here: a refused key is not the reason


@pytest.fixture
def unused_endpoint() -> str:
    probe = FakeCoordinator()
    endpoint = probe.endpoint
    probe.stop()
    return endpoint


def test_refused_raises_connection_failed_with_the_reason(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    fake.handler = lambda f, m: [protocol.Refused("client key not allowed")]
    with pytest.raises(ConnectionFailed, match="refused this client: client key not allowed"):
        client.workers()


def test_error_reply_outside_submit_raises_actorsched_error(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    fake.handler = lambda f, m: [protocol.ErrorReply(m.request_id, "bad-request", "too many ids")]  # type: ignore[attr-defined]
    with pytest.raises(ActorschedError, match="query request \\(bad-request\\): too many ids"):
        client.query("t1")


def test_undecodable_frames_are_dropped_with_a_warning(fake: FakeCoordinator, client: Client,  # noqa: F811
                                                      caplog: pytest.LogCaptureFixture) -> None:
    def garbage_first(f: FakeCoordinator, message: Message) -> list[Message] | None:
        f.send_raw([protocol.VERSION, b"no-such-kind", b"\x90"])
        f.send_raw([b"XX9", b"stats-reply", b"\x90"])
        return FakeCoordinator.default_handler(f, message)
    fake.handler = garbage_first
    with caplog.at_level("WARNING", logger="actorsched.client"):
        assert client.stats()["tasks_queued"] == 3
    assert client.dropped_frames == 2
    assert "unknown message kind" in caplog.text and "version" in caplog.text


def test_concurrent_threads_each_get_their_own_reply(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    held: list[Message] = []

    def answer_in_reverse_once_all_arrived(f: FakeCoordinator, message: Message) -> list[Message] | None:
        held.append(message)
        if len(held) < 4:
            return None
        return [r for m in reversed(held) for r in FakeCoordinator.default_handler(f, m) or []]
    fake.handler = answer_in_reverse_once_all_arrived
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def call(key: str) -> None:
        try:
            results[key] = client.query(key)
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=call, args=(k,)) for k in "wxyz"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors and all(not t.is_alive() for t in threads)
    assert {k: v.task_id for k, v in results.items()} == {k: k for k in "wxyz"}  # type: ignore[attr-defined]


def test_a_late_reply_to_a_timed_out_request_is_dropped(fake: FakeCoordinator) -> None:  # noqa: F811
    fake.handler = silent
    with Client(fake.endpoint, timeout_s=0.2) as client:
        with pytest.raises(ConnectionFailed):
            client.stats()
        late = fake.next_of(protocol.GetStats)
        fake.handler = FakeCoordinator.default_handler
        fake.run(lambda: fake.send(protocol.StatsReply(late.request_id, {"late": True})))
        assert client.stats() == {"tasks_queued": 3, "workers": {"alive": 1}}
        assert not client._arrived and not client._open


def test_closed_client_refuses_calls_and_close_is_idempotent(fake: FakeCoordinator) -> None:  # noqa: F811
    client = Client(fake.endpoint, timeout_s=1.0)
    client.close()
    client.close()
    with pytest.raises(ActorschedError, match="closed"):
        client.stats()


def test_bad_endpoint_is_a_config_error() -> None:
    with pytest.raises(ActorschedError, match="tcp://HOST:PORT"):
        Client("localhost:7700")


def test_endpoint_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTORSCHED_COORDINATOR", "tcp://127.0.0.1:7999")
    with Client(timeout_s=0.1) as client:
        assert client.endpoint == "tcp://127.0.0.1:7999"


# ------------------------------------------------------------------ query, cancel, workers, stats


def test_query_reports_not_found_for_unknown_ids_without_raising(client: Client) -> None:
    client.submit("actorsched.tasks:noop", task_id="known")
    known, unknown = client.query_many(["known", "nope"])
    assert (known.state, unknown.state) == ("QUEUED", "NOT_FOUND")
    assert client.query("nope") == TaskInfo("nope", "NOT_FOUND")


def test_cancel_returns_whether_the_task_was_cancelled(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    handle = client.submit("actorsched.tasks:noop", task_id="c1")
    assert handle.cancel() is True
    assert fake.next_of(protocol.Cancel).cascade is True
    assert client.cancel("c1", cascade=False) is False
    assert fake.next_of(protocol.Cancel).cascade is False
    assert handle.status() == "CANCELLED"


def test_workers_and_stats_return_the_replies(client: Client) -> None:
    (worker,) = client.workers()
    assert worker.worker_id == "w1" and worker.slots == 4
    assert client.stats() == {"tasks_queued": 3, "workers": {"alive": 1}}


# ------------------------------------------------------------------ waiting


def test_result_waits_for_the_pushed_tasks_done(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    handle = client.submit("actorsched.tasks:echo", 42, task_id="r1")
    original = fake.handler

    def finish_on_watch(f: FakeCoordinator, message: Message) -> list[Message] | None:
        replies = original(f, message)
        if isinstance(message, protocol.Watch):
            f.finish("r1", value=42)
        return replies
    fake.handler = finish_on_watch
    assert handle.result(timeout=5) == 42
    assert handle.done() and repr(handle) == "TaskHandle('r1', state=SUCCEEDED)"
    assert fake.next_of(protocol.Watch).task_ids == ["r1"]


def test_result_of_a_failed_task_raises_task_failed_with_the_remote_error(fake: FakeCoordinator,  # noqa: F811
                                                                         client: Client) -> None:
    handle = client.submit("actorsched.tasks:fail", task_id="f1")
    fake.finish("f1", "FAILED", error=ErrorInfo("RuntimeError", "boom", "Traceback..."))
    with pytest.raises(TaskFailed, match="'f1' FAILED: RuntimeError: boom") as caught:
        handle.result(timeout=5)
    assert caught.value.remote_traceback == "Traceback..."
    with pytest.raises(TaskFailed):  # cached: no second watch needed
        handle.result(timeout=0)


def test_result_of_an_unknown_task_raises_task_not_found(client: Client) -> None:
    with pytest.raises(TaskNotFound, match="'ghost' is not known"):
        client.handle("ghost").result(timeout=5)


def test_result_timeout_raises_timeout_and_unwatches(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    handle = client.submit("actorsched.tasks:sleep", 10, task_id="slow")
    with pytest.raises(Timeout, match="1 of 1 task.*'slow'"):
        handle.result(timeout=0.1)
    submit = fake.next_of(protocol.Submit)
    assert submit.watch  # submit() watches its task: result() needs no Watch of its own
    assert fake.next_of(protocol.Unwatch).request_id == submit.request_id


def test_a_tasks_done_arriving_during_another_request_is_buffered(fake: FakeCoordinator,  # noqa: F811
                                                                 client: Client) -> None:
    handles = client.submit_many([{"name": "a.b:c", "task_id": t} for t in ("p", "q")])
    finished = client.as_completed(handles, timeout=5)

    def finish_p_before_stats(f: FakeCoordinator, message: Message) -> list[Message] | None:
        if isinstance(message, protocol.GetStats):
            f._finish(TaskInfo("p", "SUCCEEDED", "a.b:c", value="P"))
        return FakeCoordinator.default_handler(f, message)
    fake.handler = finish_p_before_stats
    # Start the watch (the generator sends Watch on first next), but pull the TasksDone in via stats().
    fake.finish("q", value="Q")
    first = next(finished)
    assert first.task_id == "q"
    client.stats()  # the TasksDone for "p" arrives just before this reply and must be kept
    second = next(finished)
    assert second.task_id == "p" and second.result() == "P"
    with pytest.raises(StopIteration):
        next(finished)


def test_gather_returns_values_in_input_order(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    handles = client.submit_many([{"name": "a.b:c", "task_id": f"g{i}"} for i in range(5)])
    for i in reversed(range(5)):
        fake.finish(f"g{i}", value=i * 10)
    assert client.gather(handles, timeout=5) == [0, 10, 20, 30, 40]


def test_gather_raises_the_first_failure_or_returns_it_in_place(fake: FakeCoordinator,  # noqa: F811
                                                               client: Client) -> None:
    handles = client.submit_many([{"name": "a.b:c", "task_id": t} for t in ("ok", "bad")])
    fake.finish("ok", value=1)
    fake.finish("bad", "FAILED", error=ErrorInfo("ValueError", "nope"))
    with pytest.raises(TaskFailed, match="'bad' FAILED: ValueError: nope"):
        client.gather(handles, timeout=5)
    results = client.gather(handles, timeout=5, return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], TaskFailed)


def test_as_completed_yields_in_completion_order_and_times_out(fake: FakeCoordinator,  # noqa: F811
                                                              client: Client) -> None:
    handles = client.submit_many([{"name": "a.b:c", "task_id": t} for t in ("x1", "x2", "x3")])
    fake.finish("x3")
    seen = []
    with pytest.raises(Timeout, match="1 of 3 task.*'x2'"):
        for handle in client.as_completed(handles, timeout=0.5):
            seen.append(handle.task_id)
            fake.finish("x1")
    assert seen == ["x3", "x1"]


def test_a_silent_wait_pings_the_coordinator_and_renews_its_watch(fake: FakeCoordinator) -> None:  # noqa: F811
    with Client(fake.endpoint, timeout_s=0.2) as client:
        handle = client.submit("a.b:c", task_id="long")
        with pytest.raises(Timeout):
            handle.result(timeout=0.7)
        assert fake.next_of(protocol.Submit).watch  # the first watch rides on the submit
        kinds = [type(fake.next_message()).__name__ for _ in range(3)]
        assert kinds == ["GetStats", "Unwatch", "Watch"]


def test_a_dead_coordinator_during_a_wait_raises_connection_failed(fake: FakeCoordinator) -> None:  # noqa: F811
    with Client(fake.endpoint, timeout_s=0.2) as client:
        handle = client.submit("a.b:c", task_id="orphan")
        fake.handler = silent
        with pytest.raises(ConnectionFailed, match="no answer from coordinator"):
            handle.result()


def test_a_thread_waiting_for_a_result_does_not_block_other_threads(fake: FakeCoordinator,  # noqa: F811
                                                                   client: Client) -> None:
    handle = client.submit("a.b:c", task_id="blocker")
    outcome: queue.Queue[object] = queue.Queue()

    def wait() -> None:
        try:
            outcome.put(handle.result(timeout=10))
        except BaseException as exc:
            outcome.put(exc)
    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        fake.next_of(protocol.Watch)  # the waiter now holds the socket, polling
        started = time.monotonic()
        assert client.stats()["tasks_queued"] == 3
        assert time.monotonic() - started < 1.0  # well under the 2 s idle ping: the waiter let go at once
        fake.finish("blocker", value="free")
        assert outcome.get(timeout=5) == "free"
    finally:
        fake.finish("blocker", value="free")
        waiter.join(timeout=5)
    assert not waiter.is_alive()


def test_closing_the_client_ends_a_wait_in_another_thread(fake: FakeCoordinator) -> None:  # noqa: F811
    client = Client(fake.endpoint, timeout_s=2.0)
    handle = client.submit("a.b:c", task_id="never")
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def wait() -> None:
        try:
            handle.result(timeout=10)
            outcome.put(None)
        except BaseException as exc:
            outcome.put(exc)
    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        fake.next_of(protocol.Watch)
        client.close()
        error = outcome.get(timeout=5)
        assert isinstance(error, ActorschedError) and "closed" in str(error)
    finally:
        client.close()
        waiter.join(timeout=5)
    assert not waiter.is_alive()


def test_handle_caches_its_final_info(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    handle = client.submit("a.b:c", task_id="cache")
    assert handle.status() == "QUEUED" and not handle.done()
    fake.finish("cache", value=5)
    assert handle.result(timeout=5) == 5
    fake.handler = silent  # every further answer must come from the cache
    assert handle.status() == "SUCCEEDED" and handle.done() and handle.info().value == 5


def test_invalid_client_timeout_is_a_config_error() -> None:
    with pytest.raises(ActorschedError, match="timeout_s must be a number of seconds > 0, got 0"):
        Client("tcp://127.0.0.1:1", timeout_s=0)


def test_submit_then_result_is_one_exchange(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    handle = client.submit("a.b:c", task_id="one")
    fake.finish("one", value=42)
    assert handle.result(timeout=5) == 42
    assert fake.next_of(protocol.Submit).watch
    client.stats()  # a marker: nothing but it may follow the submit
    assert isinstance(fake.next_message(), protocol.GetStats)


def test_the_watch_of_a_handle_dropped_unwaited_ends_with_the_next_request(fake: FakeCoordinator,  # noqa: F811
                                                                         client: Client) -> None:
    handle = client.submit("a.b:c", task_id="dropped")
    rid = fake.next_of(protocol.Submit).request_id
    del handle  # never waited on: its watch must not stay open (nor its report be kept)
    client.submit("a.b:c", task_id="next")
    assert fake.next_of(protocol.Unwatch).request_id == rid
    assert isinstance(fake.next_message(), protocol.Submit)


def test_a_rejected_submit_leaves_no_watch_behind(fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    def reject(f: FakeCoordinator, message: Message) -> list[Message] | None:
        if isinstance(message, protocol.Submit):
            return [protocol.ErrorReply(message.request_id, "queue-full", "the queue holds 10 tasks")]
        return FakeCoordinator.default_handler(f, message)
    fake.handler = reject
    with pytest.raises(SubmitRejected, match="queue-full"):
        client.submit("a.b:c", task_id="refused")
    assert client._watches == {}  # white-box: a rejected submit must not keep a report box alive


# ------------------------------------------------------------------ refused handshakes


def test_a_refused_handshake_is_described_with_its_fix() -> None:
    from actorsched.client import describe_refusal

    endpoint = "tcp://10.0.0.1:7700"
    text = describe_refusal(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, endpoint, "/k/coord.key", "/k/me.key_secret")
    assert all(part in text for part in (endpoint, "refused this client's CURVE key", "key not accepted",
                                         "/k/me.key_secret is not allowed", "public half /k/me.key ",
                                         "client_keys_dir")), text
    text = describe_refusal(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
                            endpoint, "", "")
    assert "requires CURVE keys and this client has none" in text and "ACTORSCHED_SERVER_KEY" in text
    text = describe_refusal(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
                            endpoint, "/k/coord.key", "/k/me.key_secret")
    assert "does not use CURVE" in text
    assert describe_refusal(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32, endpoint, "", "") == ""


def test_a_client_with_keys_against_a_coordinator_without_curve_is_told_at_once(
        fake: FakeCoordinator, tmp_path: Path) -> None:  # noqa: F811
    security.generate(tmp_path, "coordinator")
    security.generate(tmp_path, "me")
    with Client(fake.endpoint, timeout_s=10.0, server_key_file=str(tmp_path / "coordinator.key"),
                key_file=str(tmp_path / "me.key_secret")) as keyed:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="does not use CURVE"):
            keyed.stats()
        assert time.monotonic() - started < 10.0


def test_list_tasks_sends_the_filters_and_returns_rows_that_say_whether_the_search_was_cut(
        fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    for n in range(3):
        fake.finish(f"l{n}", value=n)
    listing = client.list_tasks(state="succeeded", id_prefix="l", limit=2)
    assert [i.task_id for i in listing] == ["l2", "l1"] and listing.cut
    request = fake.next_of(protocol.ListTasks)
    assert (request.state, request.name, request.worker, request.id_prefix, request.limit) == (
        "SUCCEEDED", None, None, "l", 2)
    assert not client.list_tasks(limit=10).cut


@pytest.mark.parametrize("kwargs", [{"state": "DONE"}, {"limit": 0}, {"limit": 10_001}, {"limit": True},
                                    {"name": 5}])
def test_list_tasks_refuses_bad_filters_before_sending(fake: FakeCoordinator, client: Client,  # noqa: F811
                                                      kwargs: dict[str, object]) -> None:
    with pytest.raises(ActorschedError):
        client.list_tasks(**kwargs)  # type: ignore[arg-type]
    assert fake.received.empty()


def test_wait_connected_returns_once_connected_and_fails_fast_where_nothing_listens(
        fake: FakeCoordinator, client: Client) -> None:  # noqa: F811
    client.wait_connected(5.0)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, never listening: connects are refused
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    with holder, Client(f"tcp://127.0.0.1:{port}", timeout_s=10) as nowhere:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match=f"no connection to coordinator at tcp://127.0.0.1:{port} "
                                                   f"within 0.5 s .*is it running"):
            nowhere.wait_connected(0.5)
        assert time.monotonic() - started < 3.0
