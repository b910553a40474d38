"""Fidelity of the emulator, proven with the official Python SDK (stream-chat 4.33.0).

The test starts the emulator binary (env STREAM_EXPORT_BIN, default target/debug/stream-export)
on a free loopback port, drives every export call of the SDK against it, downloads the result
files with urllib and parses them, then stops the binary.
"""

import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from stream_chat import StreamChat, StreamChatAsync
from stream_chat.base.exceptions import StreamAPIException

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sdk-conformance-key"
API_SECRET = "sdk-conformance-secret-0123456789abcdef0123456789"  # >= 32 bytes for PyJWT
UTC = dt.timezone.utc
SYNTHETIC_CHANNELS = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def base_url():
    binary = os.environ.get("STREAM_EXPORT_BIN", str(ROOT / "target" / "debug" / "stream-export"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, STREAM_API_KEY=API_KEY, STREAM_API_SECRET=API_SECRET)
    proc = subprocess.Popen(
        [binary, "emulator", "--listen", f"127.0.0.1:{port}", "--synthetic-channels", str(SYNTHETIC_CHANNELS)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_emulator/counters", timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start (exit code {proc.poll()})")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def client(base_url):
    return StreamChat(api_key=API_KEY, api_secret=API_SECRET, base_url=base_url)


def check_rate_limit(response):
    info = response.rate_limit()
    assert info is not None, "x-ratelimit-* headers must be lower case"
    assert info.limit > 0
    assert 0 <= info.remaining < info.limit
    now = dt.datetime.now(UTC)
    assert now - dt.timedelta(seconds=5) < info.reset <= now + dt.timedelta(seconds=61)


def wait_done(poll, task_id):
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status = poll(task_id)
        assert status["task_id"] == task_id
        if not seen or seen[-1] != status["status"]:
            seen.append(status["status"])
        if status["status"] in ("completed", "failed"):
            return status, seen
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish: {seen}")


def download(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def parse_ts(text):
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_export_channel_with_datetimes_v1(client):
    since = dt.datetime(2024, 1, 15, 9, 30, tzinfo=UTC)
    until = dt.datetime(2024, 3, 1, tzinfo=UTC)
    response = client.export_channel("messaging", "general", messages_since=since, messages_until=until)
    assert response.status_code() == 201
    assert "duration" in response and response["duration"].endswith("ms")
    check_rate_limit(response)
    task_id = response["task_id"]
    assert uuid.UUID(task_id).version == 4

    status, seen = wait_done(client.get_export_channel_status, task_id)
    assert status["status"] == "completed"
    assert seen[-1] == "completed" and set(seen) <= {"waiting", "pending", "running", "completed"}
    for field in ("created_at", "updated_at"):
        assert status[field].endswith("Z")
        parse_ts(status[field])
    result = status["result"]
    assert result["path"] and result["s3_bucket_name"]
    assert "Expires=" in result["url"] and "Signature=" in result["url"]

    doc = json.loads(download(result["url"]))
    block = doc["channels"][0]
    assert block["channel"]["cid"] == "messaging:general"
    assert block["members"]
    messages = block["messages"]
    assert messages
    for message in messages:
        created = parse_ts(message["created_at"])
        assert since < created <= until


def test_export_channel_with_strings_options_and_v2(client):
    response = client.export_channel(
        "messaging",
        "truncated",
        messages_since="2024-01-02T00:00:00.000Z",
        messages_until="2024-03-30T00:00:00+00:00",
        include_truncated_messages=True,
        include_soft_deleted_channels=True,
        clear_deleted_message_text=True,
        export_users=True,
        version="v2",
    )
    assert response.status_code() == 201
    status, _ = wait_done(client.get_export_channel_status, response["task_id"])
    assert status["status"] == "completed"
    lines = json_lines(download(status["result"]["url"]))
    kinds = {line["type"] for line in lines}
    assert {"user", "channel", "member", "message"} <= kinds
    assert lines[0]["type"] == "user"
    for line in lines:
        if line["type"] == "message" and line["item"]["type"] == "deleted":
            assert line["item"]["text"] == ""


def test_truncated_messages_are_hidden_by_default(client):
    def count(**options):
        response = client.export_channel("messaging", "truncated", **options)
        status, _ = wait_done(client.get_task, response["task_id"])
        return len(json.loads(download(status["result"]["url"]))["channels"][0]["messages"])

    assert count(include_truncated_messages=True) > count()


def test_export_channels_with_cid_and_get_task(client):
    response = client.export_channels(
        [{"type": "messaging", "id": "general"}, {"cid": "team:engineering"}], version="v2"
    )
    assert response.status_code() == 201
    status, _ = wait_done(client.get_task, response["task_id"])
    assert status["status"] == "completed"
    channels = [line["item"]["cid"] for line in json_lines(download(status["result"]["url"])) if line["type"] == "channel"]
    assert channels == ["messaging:general", "team:engineering"]


def test_invalid_export_requests(client):
    with pytest.raises(StreamAPIException) as error:
        client.export_channels([])
    assert error.value.status_code == 400 and error.value.error_code == 4
    with pytest.raises(StreamAPIException) as error:
        client.export_channel("messaging", "general", messages_since="not a date")
    assert error.value.error_code == 4
    with pytest.raises(StreamAPIException) as error:
        client.export_channel("messaging", "general", version="v9")
    assert error.value.error_code == 4


def test_export_user(client):
    response = client.export_user("user-01")
    assert response.status_code() == 200
    check_rate_limit(response)
    assert response["user"]["id"] == "user-01"
    assert isinstance(response["messages"], list) and response["messages"]
    assert isinstance(response["reactions"], list)
    assert response["duration"].endswith("ms")


def test_export_user_errors(client):
    with pytest.raises(StreamAPIException) as error:
        client.export_user("heavy-user")
    assert error.value.status_code == 400
    assert error.value.error_code == 4
    assert "more than 10000 messages" in error.value.error_message
    with pytest.raises(StreamAPIException) as error:
        client.export_user("no-such-user")
    assert error.value.status_code == 404 and error.value.error_code == 16


def test_export_users(client):
    response = client.export_users(["user-01", "user-02"])
    assert response.status_code() == 201
    check_rate_limit(response)
    status, _ = wait_done(client.get_task, response["task_id"])
    assert status["status"] == "completed"
    url = status["result"]["url"]
    assert "/exports/users/" in url
    lines = json_lines(download(url))
    users = [line["item"]["id"] for line in lines if line["type"] == "user"]
    assert users == ["user-01", "user-02"]
    assert any(line["type"] == "message" for line in lines)


def test_export_users_with_heavy_user_fails(client):
    response = client.export_users(["heavy-user"])
    status, _ = wait_done(client.get_task, response["task_id"])
    assert status["status"] == "failed"
    assert status["error"]["type"] and "10000" in status["error"]["description"]


def test_unknown_task_and_bad_credentials(client, base_url):
    with pytest.raises(StreamAPIException) as error:
        client.get_task(str(uuid.uuid4()))
    assert error.value.status_code == 404 and error.value.error_code == 16

    wrong_secret = StreamChat(api_key=API_KEY, api_secret="x" * 48, base_url=base_url)
    with pytest.raises(StreamAPIException) as error:
        wrong_secret.export_user("user-01")
    assert error.value.status_code == 401 and error.value.error_code == 43

    wrong_key = StreamChat(api_key="nope", api_secret=API_SECRET, base_url=base_url)
    with pytest.raises(StreamAPIException) as error:
        wrong_key.export_user("user-01")
    assert error.value.status_code == 401 and error.value.error_code == 2


def test_tampered_download_is_denied(client):
    response = client.export_channel("commerce", "order-1001")
    status, _ = wait_done(client.get_task, response["task_id"])
    url = status["result"]["url"]
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(tampered, timeout=10)
    assert error.value.code == 403
    assert b"AccessDenied" in error.value.read()


def test_async_client(base_url):
    async def scenario():
        async with StreamChatAsync(api_key=API_KEY, api_secret=API_SECRET, base_url=base_url) as client:
            response = await client.export_channels([{"type": "livestream", "id": "launch"}, {"cid": "team:engineering"}])
            assert response.status_code() == 201
            # SDK quirk (aiohttp 3.14): aiohttp rewrites known header names to its canonical
            # spelling (X-RateLimit-Limit), so the async client's rate_limit() is always None,
            # whatever the server sends. The headers themselves are there.
            headers = {name.lower(): value for name, value in response.headers().items()}
            assert int(headers["x-ratelimit-limit"]) > 0
            assert "x-ratelimit-remaining" in headers and "x-ratelimit-reset" in headers
            for _ in range(300):
                status = await client.get_export_channel_status(response["task_id"])
                if status["status"] == "completed":
                    return status
                await asyncio.sleep(0.05)
            raise AssertionError("not completed")

    status = asyncio.run(scenario())
    doc = json.loads(download(status["result"]["url"]))
    assert [block["channel"]["cid"] for block in doc["channels"]] == ["livestream:launch", "team:engineering"]


def test_query_channels_lists_every_channel_by_keyset_pages(client):
    """A server-side lister (stream-api.md 1.11): pages of 30 on created_at, then cid inside one
    instant; every synthetic channel once, with the rate-limit headers the SDK reads."""
    teams = {"team": {"$in": ["acme", "globex", "initech"]}}
    order = [{"field": "created_at", "direction": 1}, {"field": "cid", "direction": 1}]
    listed, cursor = [], None
    while True:
        page = teams
        if cursor is not None:
            at, cid = cursor
            after = {"$or": [{"created_at": {"$gt": at}}, {"$and": [{"created_at": at}, {"cid": {"$gt": cid}}]}]}
            page = {"$and": [teams, after]}
        response = client.query_channels(page, order, limit=30, state=False)
        rows = response["channels"]
        assert response.rate_limit() is not None and response.rate_limit().limit > 0
        listed += [row["channel"]["cid"] for row in rows]
        if len(rows) < 30:
            break
        cursor = (rows[-1]["channel"]["created_at"], rows[-1]["channel"]["cid"])
    assert len(listed) == SYNTHETIC_CHANNELS
    assert len(set(listed)) == SYNTHETIC_CHANNELS
    assert all(cid.startswith("messaging:bulk-") for cid in listed)


def test_query_channels_defaults_and_refusals(client):
    response = client.query_channels({"cid": "messaging:general"})
    (row,) = response["channels"]
    assert row["channel"]["cid"] == "messaging:general"
    assert row["messages"], "the SDK asks for state by default"
    for bad in ({"filter_conditions": {}}, {"filter_conditions": {"type": "messaging"}, "limit": 31}):
        with pytest.raises(StreamAPIException) as refused:
            client.query_channels(bad["filter_conditions"], limit=bad.get("limit", 10))
        assert refused.value.status_code == 400 and refused.value.error_code == 4
