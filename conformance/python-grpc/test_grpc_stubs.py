"""The contract, proven with stubs generated in Python (grpcio-tools) against the real binary.

Every RPC of streamexport.v1.ExportService (export jobs and schedules included), the google.rpc
error details a client reads from the `grpc-status-details-bin` trailer (grpcio-status), the
health service and reflection.
"""

import datetime as dt
import hashlib
import json
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import duration_pb2, empty_pb2, field_mask_pb2, json_format, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from streamexport.v1 import export_pb2 as pb

from conftest import SERVICE

UTC = dt.timezone.utc
DEADLINE = 30  # seconds, for every call


def ts(text: str) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromJsonString(text)
    return value


def watch_to_end(stub, task_id: str) -> list:
    """Reads a WatchTask stream to its end and checks the stream's guarantees."""
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=DEADLINE)
    events = list(call)
    assert call.code() == grpc.StatusCode.OK
    assert events, "a stream has at least its snapshot"
    assert events[0].type == pb.TaskEvent.EVENT_TYPE_SNAPSHOT
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(e.type != pb.TaskEvent.EVENT_TYPE_SNAPSHOT for e in events[1:])
    assert all(e.task.task_id == task_id for e in events)
    last = events[-1].task
    assert last.state == pb.TASK_STATE_COMPLETED, events
    assert last.result.url.startswith("http")
    assert last.result.url_expire_time.ToDatetime(UTC) > dt.datetime.now(UTC) + dt.timedelta(hours=23)
    terminal = {pb.TASK_STATE_COMPLETED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELED}
    assert all(e.task.state not in terminal for e in events[:-1])
    return events


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read()


def details(error: grpc.RpcError) -> dict:
    """The google.rpc.Status of a failed call, its details unpacked by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, "every error carries grpc-status-details-bin"
    assert status.code == error.code().value[0]
    unpacked = {}
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                unpacked[kind.DESCRIPTOR.name] = message
    assert unpacked["ErrorInfo"].domain == "stream-export"
    return unpacked


# --- health and reflection ------------------------------------------------------------------


def test_health_check(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=DEADLINE)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services_and_serves_http_annotations(channel):
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    listed, files = list(reflection.ServerReflectionInfo(iter(requests), timeout=DEADLINE))
    names = {service.name for service in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names

    # The served descriptor carries the google.api.http options (what a transcoder reads).
    from google.protobuf import descriptor_pb2

    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in files.file_descriptor_response.file_descriptor_proto
    ]
    export = next(p for p in protos if p.name == "streamexport/v1/export.proto")
    assert "google/api/annotations.proto" in export.dependency
    methods = {m.name: m for m in export.service[0].method}
    rule = methods["GetTask"].options.Extensions[annotations_pb2.http]
    assert rule.get == "/v1/tasks/{task_id}"
    rule = methods["ExportChannels"].options.Extensions[annotations_pb2.http]
    assert (rule.post, rule.body) == ("/v1/exports/channels", "*")


# --- channel exports --------------------------------------------------------------------------


def test_export_channels_v1_watch_to_completion(stub):
    reply = stub.ExportChannels(
        pb.ExportChannelsRequest(
            channels=[pb.ChannelRef(type="messaging", id="general")],
            version=pb.EXPORT_FORMAT_VERSION_V1,
            request_id=str(uuid.uuid4()),
        ),
        timeout=DEADLINE,
    )
    uuid.UUID(reply.task_id)
    events = watch_to_end(stub, reply.task_id)
    document = json.loads(download(events[-1].task.result.url))
    assert [c["channel"]["id"] for c in document["channels"]] == ["general"]
    assert document["channels"][0]["messages"], "the general channel has messages"


def test_export_channels_v2_with_a_message_window(stub):
    since, until = "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"
    reply = stub.ExportChannels(
        pb.ExportChannelsRequest(
            channels=[
                pb.ChannelRef(type="messaging", id="general", messages_since=ts(since), messages_until=ts(until))
            ],
            include_truncated_messages=True,
            version=pb.EXPORT_FORMAT_VERSION_V2,
        ),
        timeout=DEADLINE,
    )
    events = watch_to_end(stub, reply.task_id)
    url = events[-1].task.result.url
    assert ".jsonl" in url
    lines = [json.loads(line) for line in download(url).splitlines() if line.strip()]
    kinds = {line["type"] for line in lines}
    assert {"channel", "message"} <= kinds
    created = [line["item"]["created_at"] for line in lines if line["type"] == "message"]
    assert created
    low, high = dt.datetime.fromisoformat(since), dt.datetime.fromisoformat(until)
    for stamp in created:
        assert low < dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= high


# --- user exports ---------------------------------------------------------------------------


def test_export_users_then_get_task(stub):
    reply = stub.ExportUsers(
        pb.ExportUsersRequest(user_ids=["user-01", "user-02"], request_id=str(uuid.uuid4())),
        timeout=DEADLINE,
    )
    deadline = time.monotonic() + DEADLINE
    while True:
        task = stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id), timeout=DEADLINE)
        assert task.task_id == reply.task_id
        assert task.upstream_status
        assert task.create_time.seconds > 0
        if task.state == pb.TASK_STATE_COMPLETED:
            break
        assert task.state in (pb.TASK_STATE_WAITING, pb.TASK_STATE_PENDING, pb.TASK_STATE_RUNNING)
        assert time.monotonic() < deadline, "the users export did not complete"
        time.sleep(0.2)
    assert task.upstream_status == "completed"
    assert task.result.url_expire_time.ToDatetime(UTC) > dt.datetime.now(UTC) + dt.timedelta(hours=23)
    lines = [json.loads(line) for line in download(task.result.url).splitlines() if line.strip()]
    users = {line["item"]["id"] for line in lines if line["type"] == "user"}
    assert users == {"user-01", "user-02"}


def test_export_user_keeps_custom_fields(stub):
    reply = stub.ExportUser(pb.ExportUserRequest(user_id="user-01"), timeout=DEADLINE)
    user = json_format.MessageToDict(reply.user)
    assert user["id"] == "user-01"
    assert isinstance(user["team"], str) and user["team"]
    location = user["profile"]["location"]
    assert location["city"] and location["country"]
    assert isinstance(user["profile"]["languages"], list)
    messages = [json_format.MessageToDict(m) for m in reply.messages]
    assert messages and all(m["id"] and m["cid"] for m in messages)
    assert all("user" in m and m["user"] is None for m in messages), "JSON null survives as NullValue"
    reactions = [json_format.MessageToDict(r) for r in reply.reactions]
    assert all(r["user_id"] == "user-01" for r in reactions)


def test_watch_task_of_a_finished_task_is_one_completed_snapshot(stub):
    reply = stub.ExportUsers(pb.ExportUsersRequest(user_ids=["user-03"]), timeout=DEADLINE)
    watch_to_end(stub, reply.task_id)
    events = watch_to_end(stub, reply.task_id)
    assert len(events) == 1


# --- errors, read from grpc-status-details-bin ------------------------------------------------


def test_invalid_channel_id_is_invalid_argument_with_bad_request(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.ExportChannels(
            pb.ExportChannelsRequest(channels=[pb.ChannelRef(type="messaging", id="not a valid id")]),
            timeout=DEADLINE,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(error.value)
    assert found["ErrorInfo"].reason == "INVALID_REQUEST"
    fields = [v.field for v in found["BadRequest"].field_violations]
    assert fields == ["channels[0].id"]


def test_unknown_task_is_not_found(stub):
    task_id = str(uuid.uuid4())
    with pytest.raises(grpc.RpcError) as error:
        stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=DEADLINE)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(error.value)["ErrorInfo"].reason == "TASK_NOT_FOUND"

    with pytest.raises(grpc.RpcError) as error:
        list(stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=DEADLINE))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(error.value)["ErrorInfo"].reason == "TASK_NOT_FOUND"


def test_heavy_user_is_failed_precondition(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.ExportUser(pb.ExportUserRequest(user_id="heavy-user"), timeout=DEADLINE)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = details(error.value)["ErrorInfo"]
    assert info.reason == "USER_EXPORT_TOO_LARGE"


# --- reading an export ------------------------------------------------------------------------


def save_export(stub, task_id: str, path, start_index: int = 0) -> int:
    """docs/clients.md's example: every record of an export into a JSON-lines file."""
    count = 0
    request = pb.ReadExportRequest(task_id=task_id, start_index=start_index)
    with open(path, "w") as out:
        for record in stub.ReadExport(request, timeout=DEADLINE):
            out.write(json.dumps({"type": record.kind, "item": json_format.MessageToDict(record.item)}) + "\n")
            count += 1
    return count


def test_read_export_writes_every_record_to_a_jsonl_file(stub, tmp_path):
    reply = stub.ExportChannels(
        pb.ExportChannelsRequest(
            channels=[pb.ChannelRef(type="messaging", id="general")],
            version=pb.EXPORT_FORMAT_VERSION_V2,
            export_users=True,
        ),
        timeout=DEADLINE,
    )
    events = watch_to_end(stub, reply.task_id)
    expected = [json.loads(line) for line in download(events[-1].task.result.url).splitlines() if line.strip()]

    path = tmp_path / "export.jsonl"
    assert save_export(stub, reply.task_id, path) == len(expected)
    saved = [json.loads(line) for line in path.read_text().splitlines()]
    assert saved == expected  # numbers compare equal as int or float

    # Resuming from an index gives exactly the rest.
    tail = tmp_path / "tail.jsonl"
    assert save_export(stub, reply.task_id, tail, start_index=len(expected) - 2) == 2
    assert [json.loads(line) for line in tail.read_text().splitlines()] == expected[-2:]


def test_read_export_as_json_saves_the_same_records_as_structs(stub, tmp_path):
    """save_export.py (docs/clients.md's example, RECORD_ENCODING_JSON) against the Struct records."""
    from save_export import save_export as save_export_json

    for version in (pb.EXPORT_FORMAT_VERSION_V2, pb.EXPORT_FORMAT_VERSION_V1):
        reply = stub.ExportChannels(
            pb.ExportChannelsRequest(
                channels=[pb.ChannelRef(type="messaging", id="general")], version=version, export_users=True
            ),
            timeout=DEADLINE,
        )
        events = watch_to_end(stub, reply.task_id)
        structs = [
            {"type": r.kind, "item": json_format.MessageToDict(r.item)}
            for r in stub.ReadExport(pb.ReadExportRequest(task_id=reply.task_id), timeout=DEADLINE)
        ]
        assert len(structs) >= 2, version

        path = tmp_path / f"export-{version}.jsonl"
        assert save_export_json(stub, reply.task_id, str(path)) == len(structs)
        lines = path.read_bytes().split(b"\n")
        assert lines.pop() == b"", "every record ends with a line ending"
        saved = [json.loads(line) for line in lines]
        assert all(list(record) == ["type", "item"] for record in saved), version
        assert saved == structs, version  # numbers compare equal as int or float
        if version == pb.EXPORT_FORMAT_VERSION_V2:
            file = download(events[-1].task.result.url)
            assert lines == [line for line in file.splitlines() if line.strip()], "the V2 lines verbatim"

        # Each message's index is the count of records before it (a resume goes on from any index).
        request = pb.ReadExportRequest(task_id=reply.task_id, start_index=1, encoding=pb.RECORD_ENCODING_JSON)
        count = 1
        for message in stub.ReadExport(request, timeout=DEADLINE):
            assert message.index == count and not message.kind and not message.HasField("item")
            assert message.json, "a message carries at least one record"
            assert list(message.json) == lines[count : count + len(message.json)]
            count += len(message.json)
        assert count == len(structs)


def test_read_export_of_an_unfinished_task_is_failed_precondition(stub):
    reply = stub.ExportUsers(pb.ExportUsersRequest(user_ids=["heavy-user"]), timeout=DEADLINE)
    deadline = time.monotonic() + DEADLINE
    while stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id), timeout=DEADLINE).state != pb.TASK_STATE_FAILED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.ReadExport(pb.ReadExportRequest(task_id=reply.task_id), timeout=DEADLINE))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(raised.value)["ErrorInfo"].reason == "TASK_NOT_COMPLETED"


# --- the task list ----------------------------------------------------------------------------


def list_all(stub, page_size: int) -> list:
    """Every page of ListTasks with the given page size: no page larger, no task twice."""
    tasks, token = [], ""
    for _ in range(10_000):
        reply = stub.ListTasks(pb.ListTasksRequest(page_size=page_size, page_token=token), timeout=DEADLINE)
        assert len(reply.tasks) <= page_size
        tasks.extend(reply.tasks)
        if not reply.next_page_token:
            ids = [task.task_id for task in tasks]
            assert len(ids) == len(set(ids)), "a task listed twice"
            return tasks
        assert reply.next_page_token != token
        token = reply.next_page_token
    raise AssertionError("ListTasks: more than 10000 pages")


def test_list_tasks_lists_the_submitted_tasks_newest_first_and_paginates(stub):
    channels_request = pb.ExportChannelsRequest(
        channels=[pb.ChannelRef(type="messaging", id="general")],
        version=pb.EXPORT_FORMAT_VERSION_V2,
        request_id=str(uuid.uuid4()),
    )
    channels = stub.ExportChannels(channels_request, timeout=DEADLINE)
    users_request = pb.ExportUsersRequest(user_ids=["user-01"], request_id=str(uuid.uuid4()))
    users = stub.ExportUsers(users_request, timeout=DEADLINE)

    tasks = list_all(stub, 1000)
    by_id = {task.task_id: (i, task) for i, task in enumerate(tasks)}
    assert channels.task_id in by_id, "the ExportChannels task is listed"
    assert users.task_id in by_id, "the ExportUsers task is listed"
    channels_at, channels_record = by_id[channels.task_id]
    users_at, users_record = by_id[users.task_id]
    assert users_at < channels_at, "newest first"
    assert (channels_record.rpc, channels_record.owner) == ("ExportChannels", "anonymous")
    assert channels_record.WhichOneof("submit") == "export_channels"
    assert channels_record.export_channels == channels_request
    assert (users_record.rpc, users_record.owner) == ("ExportUsers", "anonymous")
    assert users_record.WhichOneof("submit") == "export_users"
    assert users_record.export_users == users_request
    for task in tasks:
        assert task.HasField("create_time") and task.create_time.seconds > 0
    stamps = [task.create_time.ToDatetime(UTC) for task in tasks]
    assert stamps == sorted(stamps, reverse=True), "newest first"

    # page_size=1: a next_page_token, and the next page continues with another task.
    first = stub.ListTasks(pb.ListTasksRequest(page_size=1), timeout=DEADLINE)
    assert len(first.tasks) == 1 and first.next_page_token
    second = stub.ListTasks(pb.ListTasksRequest(page_size=1, page_token=first.next_page_token), timeout=DEADLINE)
    assert len(second.tasks) == 1
    assert second.tasks[0].task_id != first.tasks[0].task_id
    # Every page of one, walked to the end, is the same list as one large page.
    assert [t.task_id for t in list_all(stub, 1)] == [t.task_id for t in tasks]


def test_list_tasks_rejects_a_negative_page_size_and_a_foreign_token(stub):
    for field, request in (
        ("page_size", pb.ListTasksRequest(page_size=-1)),
        ("page_token", pb.ListTasksRequest(page_token="not-a-page-token")),
    ):
        with pytest.raises(grpc.RpcError) as error:
            stub.ListTasks(request, timeout=DEADLINE)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = details(error.value)
        assert found["ErrorInfo"].reason == "INVALID_REQUEST"
        assert [v.field for v in found["BadRequest"].field_violations] == [field]


# --- export jobs ------------------------------------------------------------------------------

# The channels of the emulator's data set that a plain export includes (messaging:archived is
# soft-deleted; team:firehose holds the heavy user's ten thousand messages).
JOB_CHANNELS = [
    ("messaging", "general"),
    ("messaging", "truncated"),
    ("messaging", "dm-a"),
    ("messaging", "dm-b"),
    ("messaging", "dm-c"),
    ("livestream", "launch"),
    ("team", "engineering"),
    ("commerce", "order-1001"),
    ("commerce", "order-1002"),
]
JOB_TERMINAL = {pb.EXPORT_JOB_STATE_SUCCEEDED, pb.EXPORT_JOB_STATE_FAILED, pb.EXPORT_JOB_STATE_CANCELLED}


def watch_job_to_end(stub, job_id: str) -> list:
    """Reads a WatchExportJob stream to its end and checks the stream's guarantees."""
    call = stub.WatchExportJob(pb.WatchExportJobRequest(job_id=job_id), timeout=2 * DEADLINE)
    events = list(call)
    assert call.code() == grpc.StatusCode.OK
    assert events, "a stream has at least its snapshot"
    assert events[0].type == pb.TaskEvent.EVENT_TYPE_SNAPSHOT
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(e.type != pb.TaskEvent.EVENT_TYPE_SNAPSHOT for e in events[1:])
    assert all(e.job.job_id == job_id for e in events)
    assert all(e.job.state not in JOB_TERMINAL for e in events[:-1]), "the terminal state comes last"
    return events


def list_job_shards(stub, job_id: str) -> list:
    """Every page of ListExportJobTasks, one shard a page."""
    shards, token = [], ""
    for _ in range(1_000):
        request = pb.ListExportJobTasksRequest(job_id=job_id, page_size=1, page_token=token)
        reply = stub.ListExportJobTasks(request, timeout=DEADLINE)
        assert len(reply.tasks) <= 1
        shards.extend(reply.tasks)
        if not reply.next_page_token:
            return shards
        assert reply.next_page_token != token
        token = reply.next_page_token
    raise AssertionError("ListExportJobTasks: more than 1000 pages")


def test_export_job_of_a_channel_list_runs_to_success_and_its_shards_are_ordinary_tasks(stub):
    from conftest import JOB_SHARD_SIZE

    request = pb.CreateExportJobRequest(
        channels=pb.ChannelList(channels=[pb.ChannelRef(type=kind, id=id) for kind, id in JOB_CHANNELS]),
        messages_since=ts("2024-01-01T00:00:00Z"),
        version=pb.EXPORT_FORMAT_VERSION_V2,
        request_id=str(uuid.uuid4()),
    )
    job = stub.CreateExportJob(request, timeout=DEADLINE)
    uuid.UUID(job.job_id)
    assert job.owner == "anonymous"
    assert job.request == request, "the request as given"
    assert job.state in (pb.EXPORT_JOB_STATE_PLANNING, pb.EXPORT_JOB_STATE_RUNNING)
    assert job.create_time.seconds > 0
    # A retried create with the same request_id is the same job.
    assert stub.CreateExportJob(request, timeout=DEADLINE).job_id == job.job_id

    events = watch_job_to_end(stub, job.job_id)
    done = events[-1].job
    assert done.state == pb.EXPORT_JOB_STATE_SUCCEEDED, events
    shard_count = -(-len(JOB_CHANNELS) // JOB_SHARD_SIZE)
    progress = done.progress
    assert (progress.channels_total, progress.tasks_total) == (len(JOB_CHANNELS), shard_count)
    assert (progress.tasks_submitted, progress.tasks_completed, progress.tasks_failed) == (shard_count, shard_count, 0)
    assert done.HasField("end_time") and not done.HasField("error")
    assert done.end_time.ToDatetime(UTC) >= done.create_time.ToDatetime(UTC)

    # The watch leaves the list out of the request; GetExportJob reads the same job with the
    # request whole; ListExportJobs lists it as the watch shows it.
    assert len(done.request.channels.channels) == 0
    whole = pb.ExportJob()
    whole.CopyFrom(done)
    whole.request.CopyFrom(request)
    assert stub.GetExportJob(pb.GetExportJobRequest(job_id=job.job_id), timeout=DEADLINE) == whole
    listed, token = [], ""
    while True:
        page = stub.ListExportJobs(pb.ListExportJobsRequest(page_size=10, page_token=token), timeout=DEADLINE)
        listed.extend(page.jobs)
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert [j for j in listed if j.job_id == job.job_id] == [done]

    # Its shards, a page each: every channel in one shard, every shard's task completed once.
    shards = list_job_shards(stub, job.job_id)
    assert [s.shard for s in shards] == list(range(shard_count))
    assert all(len(s.channels) <= JOB_SHARD_SIZE for s in shards)
    exported = [(c.type, c.id) for s in shards for c in s.channels]
    assert sorted(exported) == sorted(JOB_CHANNELS)
    for shard in shards:
        uuid.UUID(shard.task_id)
        assert shard.state == pb.TASK_STATE_COMPLETED, shard
        assert shard.attempts == 1 and not shard.earlier_task_ids
        assert all(c.messages_since == request.messages_since for c in shard.channels), "the job's window"
    assert len({s.task_id for s in shards}) == shard_count

    # A shard's task is an ordinary task: GetTask and ReadExport work on it.
    task = stub.GetTask(pb.GetTaskRequest(task_id=shards[-1].task_id), timeout=DEADLINE)
    assert task.task_id == shards[-1].task_id
    assert task.state == pb.TASK_STATE_COMPLETED
    records = list(stub.ReadExport(pb.ReadExportRequest(task_id=task.task_id), timeout=DEADLINE))
    channel_ids = {json_format.MessageToDict(r.item)["id"] for r in records if r.kind == "channel"}
    assert channel_ids == {c.id for c in shards[-1].channels}

    # Cancelling a finished job returns it unchanged.
    assert stub.CancelExportJob(pb.CancelExportJobRequest(job_id=job.job_id), timeout=DEADLINE) == done
    assert stub.GetExportJob(pb.GetExportJobRequest(job_id=job.job_id), timeout=DEADLINE) == whole


def test_unknown_export_job_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.GetExportJob(pb.GetExportJobRequest(job_id=str(uuid.uuid4())), timeout=DEADLINE)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(error.value)["ErrorInfo"].reason == "JOB_NOT_FOUND"


def test_export_job_without_a_selector_is_invalid_argument_with_bad_request(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.CreateExportJob(pb.CreateExportJobRequest(version=pb.EXPORT_FORMAT_VERSION_V2), timeout=DEADLINE)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(error.value)
    assert found["ErrorInfo"].reason == "INVALID_REQUEST"
    assert [v.field for v in found["BadRequest"].field_violations] == ["selector"]


# --- archived export jobs -----------------------------------------------------------------------


def local_path(uri: str) -> Path:
    """The local path of a `file:///...` URI."""
    assert uri.startswith("file:///"), uri
    return Path(urllib.parse.unquote(uri[len("file://") :]))


def test_archived_export_job_writes_files_and_a_manifest_that_verify_checks(stub, archive_root):
    from conftest import ARCHIVE_ALLOWED, JOB_SHARD_SIZE

    folder = archive_root / ARCHIVE_ALLOWED / "jobs"
    request = pb.CreateExportJobRequest(
        channels=pb.ChannelList(channels=[pb.ChannelRef(type=kind, id=id) for kind, id in JOB_CHANNELS]),
        version=pb.EXPORT_FORMAT_VERSION_V2,
        archive_uri=folder.as_uri(),
        verify=True,
    )
    job = stub.CreateExportJob(request, timeout=DEADLINE)
    assert job.request.archive_uri == request.archive_uri and job.request.verify
    done = watch_job_to_end(stub, job.job_id)[-1].job
    assert done.state == pb.EXPORT_JOB_STATE_SUCCEEDED, done
    shard_count = -(-len(JOB_CHANNELS) // JOB_SHARD_SIZE)
    assert done.manifest_uri == f"{folder.as_uri()}/{job.job_id}/manifest.json"
    assert done.manifest_uri.endswith(f"/{job.job_id}/manifest.json")

    # Every shard's file is in the archive, under the job's folder, as ListExportJobTasks says.
    shards = list_job_shards(stub, job.job_id)
    assert [s.shard for s in shards] == list(range(shard_count))
    key_prefix = str(folder / job.job_id).lstrip("/")  # a file:// key: the path without its first /
    for shard in shards:
        archived = shard.archive
        assert archived.key == f"{key_prefix}/{shard.shard:05d}-{shard.task_id}.jsonl", archived
        assert len(archived.sha256) == 64 and set(archived.sha256) <= set("0123456789abcdef"), archived
        content = Path("/", archived.key).read_bytes()
        assert archived.bytes == len(content) > 0
        assert archived.sha256 == hashlib.sha256(content).hexdigest()
        # The copy is Stream's file, byte for byte.
        task = stub.GetTask(pb.GetTaskRequest(task_id=shard.task_id), timeout=DEADLINE)
        assert download(task.result.url) == content
    progress = done.progress
    assert progress.tasks_total == shard_count
    assert progress.tasks_archived == progress.tasks_total
    assert progress.bytes_archived == sum(s.archive.bytes for s in shards) > 0

    # The manifest lists the same files; SHA256SUMS beside it, for `sha256sum -c`.
    manifest_path = local_path(done.manifest_uri)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format"] == "stream-export.manifest.v1"
    assert manifest["job"]["job_id"] == job.job_id
    files = [(f["key"], f["bytes"], f["sha256"]) for f in manifest["files"]]
    assert files == [(s.archive.key, s.archive.bytes, s.archive.sha256) for s in shards]
    sums = (manifest_path.parent / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{s.archive.sha256}  {s.archive.key.rsplit('/', 1)[-1]}" for s in shards]

    verified = stub.VerifyExportJob(pb.VerifyExportJobRequest(job_id=job.job_id), timeout=DEADLINE)
    assert verified.manifest_uri == done.manifest_uri
    assert verified.objects_checked == progress.tasks_total
    assert verified.bytes_checked == progress.bytes_archived
    assert list(verified.mismatches) == []

    # One byte of one archived file overwritten: Verify names that file, and only it.
    corrupted = shards[1].archive
    path = Path("/", corrupted.key)
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(content)
    verified = stub.VerifyExportJob(pb.VerifyExportJobRequest(job_id=job.job_id), timeout=DEADLINE)
    assert verified.objects_checked == progress.tasks_total
    assert [(m.key, m.problem) for m in verified.mismatches] == [(corrupted.key, pb.ArchiveMismatch.PROBLEM_SHA256)]
    mismatch = verified.mismatches[0]
    assert (mismatch.expected_bytes, mismatch.actual_bytes) == (corrupted.bytes, corrupted.bytes)
    assert mismatch.expected_sha256 == corrupted.sha256
    assert mismatch.actual_sha256 == hashlib.sha256(content).hexdigest()


def test_archive_refusals_as_the_stubs_see_them(stub, archive_root):
    channels = pb.ChannelList(channels=[pb.ChannelRef(type="messaging", id="general")])

    # Outside the allowed prefix: PERMISSION_DENIED, the refused URI in the ErrorInfo.
    outside = (archive_root / "outside").as_uri()
    with pytest.raises(grpc.RpcError) as error:
        stub.CreateExportJob(pb.CreateExportJobRequest(channels=channels, archive_uri=outside), timeout=DEADLINE)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = details(error.value)["ErrorInfo"]
    assert info.reason == "ARCHIVE_NOT_ALLOWED"
    assert info.metadata["archive_uri"] == outside

    # A malformed URI, and `verify` without an archive: INVALID_ARGUMENT on that field.
    for field, request in (
        ("archive_uri", pb.CreateExportJobRequest(channels=channels, archive_uri="s3://x/../y")),
        ("verify", pb.CreateExportJobRequest(channels=channels, verify=True)),
    ):
        with pytest.raises(grpc.RpcError) as error:
            stub.CreateExportJob(request, timeout=DEADLINE)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        found = details(error.value)
        assert found["ErrorInfo"].reason == "INVALID_REQUEST"
        assert [v.field for v in found["BadRequest"].field_violations] == [field]

    # A job without an archive has nothing to verify.
    job = stub.CreateExportJob(pb.CreateExportJobRequest(channels=channels), timeout=DEADLINE)
    with pytest.raises(grpc.RpcError) as error:
        stub.VerifyExportJob(pb.VerifyExportJobRequest(job_id=job.job_id), timeout=DEADLINE)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error.value)["ErrorInfo"].reason == "NOT_ARCHIVED"


# --- export schedules -------------------------------------------------------------------------

# A schedule's jobs export two of the emulator's channels: one shard each, quick to run.
SCHEDULE_CHANNELS = [("messaging", "general"), ("messaging", "dm-a")]
MICROS = 1_000_000


def micros(value) -> int:
    """A Timestamp or Duration in microseconds."""
    return value.seconds * MICROS + value.nanos // 1_000


def schedule_jobs(stub, schedule_id: str) -> list:
    """The jobs ListExportJobs shows for one schedule, every page read."""
    jobs, token = [], ""
    for _ in range(1_000):
        page = stub.ListExportJobs(pb.ListExportJobsRequest(page_size=100, page_token=token), timeout=DEADLINE)
        jobs.extend(job for job in page.jobs if job.schedule_id == schedule_id)
        if not page.next_page_token:
            ids = [job.job_id for job in jobs]
            assert len(ids) == len(set(ids)), "a job listed twice"
            return jobs
        token = page.next_page_token
    raise AssertionError("ListExportJobs: more than 1000 pages")


def check_windows(schedule, jobs: list) -> list:
    """The jobs of a schedule tile its windows from start_time, one job per window, no gap and no
    overlap; returns them in window order."""
    jobs = sorted(jobs, key=lambda job: micros(job.request.messages_since))
    start, step = micros(schedule.start_time), micros(schedule.interval)
    for k, job in enumerate(jobs):
        since, until = micros(job.request.messages_since), micros(job.request.messages_until)
        assert since == start + k * step, f"window {k} starts at {since} µs, want {start + k * step}"
        assert until == since + step - 1, f"window {k} ends at {until} µs, want 1 µs before the next"
        if k + 1 < len(jobs):
            assert until == micros(jobs[k + 1].request.messages_since) - 1, "the windows tile"
        assert job.request.request_id == f"schedule:{schedule.schedule_id}:window:{since}"
        assert job.owner == schedule.owner
    return jobs


def wait_for_schedule_jobs(stub, schedule_id: str, count: int, seconds: float = 10) -> list:
    deadline = time.monotonic() + seconds
    while True:
        jobs = schedule_jobs(stub, schedule_id)
        if len(jobs) >= count:
            return jobs
        assert time.monotonic() < deadline, f"{len(jobs)} jobs of the schedule after {seconds} s, want {count}"
        time.sleep(0.2)


def delete_schedule_quietly(stub, schedule_id: str):
    """Stops a schedule that a failed test left firing (it may be deleted already)."""
    try:
        stub.DeleteExportSchedule(pb.DeleteExportScheduleRequest(schedule_id=schedule_id), timeout=DEADLINE)
    except grpc.RpcError:
        pass


def test_export_schedule_tiles_windows_pauses_and_deletes(stub):
    channels = pb.ChannelList(channels=[pb.ChannelRef(type=kind, id=id) for kind, id in SCHEDULE_CHANNELS])
    # A job request reused as the template: its window and request_id are the schedule's to set.
    template = pb.CreateExportJobRequest(
        channels=channels,
        messages_since=ts("2024-01-01T00:00:00Z"),
        version=pb.EXPORT_FORMAT_VERSION_V2,
        request_id=str(uuid.uuid4()),
    )
    # Four whole seconds ago: windows of 1 s with no lag, so four are due at once.
    start = timestamp_pb2.Timestamp(seconds=int(time.time()) - 4)
    request = pb.CreateExportScheduleRequest(
        schedule=pb.ExportSchedule(
            template=template,
            interval=duration_pb2.Duration(seconds=1),
            lag=duration_pb2.Duration(seconds=0),
            start_time=start,
        ),
        request_id=str(uuid.uuid4()),
    )
    schedule = stub.CreateExportSchedule(request, timeout=DEADLINE)
    try:
        uuid.UUID(schedule.schedule_id)
        assert schedule.owner == "anonymous"
        expected_template = pb.CreateExportJobRequest()
        expected_template.CopyFrom(template)
        expected_template.ClearField("messages_since")
        expected_template.ClearField("request_id")
        assert schedule.template == expected_template, "the template without its window and request_id"
        assert schedule.interval == duration_pb2.Duration(seconds=1)
        assert schedule.HasField("lag") and schedule.lag == duration_pb2.Duration()
        assert schedule.start_time == start
        assert schedule.next_window_start == start
        assert schedule.windows_started == 0 and not schedule.paused
        assert schedule.create_time.seconds > 0 and schedule.update_time.seconds > 0
        # A retried create with the same request_id is the same schedule.
        assert stub.CreateExportSchedule(request, timeout=DEADLINE).schedule_id == schedule.schedule_id

        # The due windows start: one job each, in window order, tiling time from start_time.
        jobs = check_windows(schedule, wait_for_schedule_jobs(stub, schedule.schedule_id, 3))
        first = stub.GetExportJob(pb.GetExportJobRequest(job_id=jobs[0].job_id), timeout=DEADLINE)
        window = pb.CreateExportJobRequest()
        window.CopyFrom(expected_template)
        window.messages_since.CopyFrom(start)
        window.messages_until.FromMicroseconds(micros(start) + MICROS - 1)
        window.request_id = f"schedule:{schedule.schedule_id}:window:{micros(start)}"
        assert first.request == window, "the first window's job: the template with its window"
        assert first.schedule_id == schedule.schedule_id and first.owner == schedule.owner

        read = stub.GetExportSchedule(pb.GetExportScheduleRequest(schedule_id=schedule.schedule_id), timeout=DEADLINE)
        assert read.windows_started >= len(jobs) >= 3
        assert micros(read.next_window_start) == micros(start) + read.windows_started * MICROS, "the cursor advanced"
        assert read.last_job_id and read.template == expected_template and read.start_time == start

        listed, token = [], ""
        for _ in range(1_000):
            page = stub.ListExportSchedules(pb.ListExportSchedulesRequest(page_size=1, page_token=token), timeout=DEADLINE)
            assert len(page.schedules) <= 1
            listed.extend(page.schedules)
            token = page.next_page_token
            if not token:
                break
        mine = [s for s in listed if s.schedule_id == schedule.schedule_id]
        assert len(mine) == 1 and mine[0].template == expected_template and mine[0].owner == "anonymous"

        # Paused: the answer says so, and no window starts while it is.
        paused = stub.UpdateExportSchedule(
            pb.UpdateExportScheduleRequest(
                schedule=pb.ExportSchedule(schedule_id=schedule.schedule_id, paused=True),
                update_mask=field_mask_pb2.FieldMask(paths=["paused"]),
            ),
            timeout=DEADLINE,
        )
        assert paused.paused and paused.schedule_id == schedule.schedule_id
        assert paused.interval == schedule.interval and paused.template == expected_template, "the rest unchanged"
        before = {job.job_id for job in schedule_jobs(stub, schedule.schedule_id)}
        time.sleep(2)
        after = schedule_jobs(stub, schedule.schedule_id)
        assert {job.job_id for job in after} == before, "no job started while paused"
        read = stub.GetExportSchedule(pb.GetExportScheduleRequest(schedule_id=schedule.schedule_id), timeout=DEADLINE)
        assert read.paused and read.windows_started == paused.windows_started == len(after), "one job per window"
        check_windows(schedule, after)

        # Deleted: Empty, then NOT_FOUND; the jobs it started stay.
        reply = stub.DeleteExportSchedule(
            pb.DeleteExportScheduleRequest(schedule_id=schedule.schedule_id), timeout=DEADLINE
        )
        assert isinstance(reply, empty_pb2.Empty)
        with pytest.raises(grpc.RpcError) as error:
            stub.GetExportSchedule(pb.GetExportScheduleRequest(schedule_id=schedule.schedule_id), timeout=DEADLINE)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert details(error.value)["ErrorInfo"].reason == "SCHEDULE_NOT_FOUND"
        assert stub.GetExportJob(pb.GetExportJobRequest(job_id=jobs[0].job_id), timeout=DEADLINE).job_id == jobs[0].job_id
    finally:
        delete_schedule_quietly(stub, schedule.schedule_id)


def test_export_schedule_refusals_as_the_stubs_see_them(stub):
    template = pb.CreateExportJobRequest(channels=pb.ChannelList(channels=[pb.ChannelRef(type="messaging", id="general")]))
    now = timestamp_pb2.Timestamp(seconds=int(time.time()))

    # An interval of 0: INVALID_ARGUMENT on schedule.interval.
    with pytest.raises(grpc.RpcError) as error:
        stub.CreateExportSchedule(
            pb.CreateExportScheduleRequest(
                schedule=pb.ExportSchedule(template=template, interval=duration_pb2.Duration(), start_time=now)
            ),
            timeout=DEADLINE,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(error.value)
    assert found["ErrorInfo"].reason == "INVALID_REQUEST"
    assert [v.field for v in found["BadRequest"].field_violations] == ["schedule.interval"]

    # An update_mask path that is not a changeable field: INVALID_ARGUMENT on update_mask.
    schedule = stub.CreateExportSchedule(
        pb.CreateExportScheduleRequest(
            schedule=pb.ExportSchedule(
                template=template, interval=duration_pb2.Duration(seconds=3600), start_time=now, paused=True
            )
        ),
        timeout=DEADLINE,
    )
    try:
        assert schedule.paused
        with pytest.raises(grpc.RpcError) as error:
            stub.UpdateExportSchedule(
                pb.UpdateExportScheduleRequest(
                    schedule=pb.ExportSchedule(schedule_id=schedule.schedule_id, owner="someone-else"),
                    update_mask=field_mask_pb2.FieldMask(paths=["owner"]),
                ),
                timeout=DEADLINE,
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = details(error.value)
        assert found["ErrorInfo"].reason == "INVALID_REQUEST"
        assert [v.field for v in found["BadRequest"].field_violations] == ["update_mask"]
        read = stub.GetExportSchedule(pb.GetExportScheduleRequest(schedule_id=schedule.schedule_id), timeout=DEADLINE)
        assert read.owner == "anonymous", "a refused update changes nothing"
    finally:
        delete_schedule_quietly(stub, schedule.schedule_id)
