'use strict';
// The contract, proven from Node.js (@grpc/grpc-js + @grpc/proto-loader) against the real
// binary: every RPC of streamexport.v1.ExportService (export jobs and schedules included), the
// google.rpc error details decoded from the `grpc-status-details-bin` trailer, and the health
// service.

const assert = require('node:assert/strict');
const { createHash, randomUUID } = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { fileURLToPath, pathToFileURL } = require('node:url');
const { after, before, describe, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { SERVICE, JOB_SHARD_SIZE, ARCHIVE_ALLOWED, loadStubs, loadStatusTypes, startServer } = require('./server');

const DEADLINE_MS = 30_000;
const { ExportService, Health } = loadStubs();
const statusTypes = loadStatusTypes();

let server;
let client;

before(async () => {
  server = await startServer(Health);
  client = new ExportService(server.address, grpc.credentials.createInsecure());
});

after(async () => {
  client?.close();
  await server?.stop();
});

const deadline = () => ({ deadline: Date.now() + DEADLINE_MS });

/** A unary call as a promise. */
function unary(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, deadline(), (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

/** A unary call that must fail; resolves to the error. */
async function failing(method, request) {
  try {
    await unary(method, request);
  } catch (err) {
    return err;
  }
  assert.fail(`${method} should have failed`);
}

/** Reads a WatchTask stream to its end; resolves to { events, status }. */
function watch(taskId) {
  return new Promise((resolve, reject) => {
    const events = [];
    const call = client.WatchTask({ task_id: taskId }, deadline());
    call.on('data', (event) => events.push(event));
    call.on('error', (err) => reject(Object.assign(err, { events })));
    call.on('status', (status) => {
      if (status.code === grpc.status.OK) resolve({ events, status });
    });
  });
}

/** Checks a WatchTask stream's guarantees for a task that completes. */
function checkCompletedStream(taskId, events) {
  assert.ok(events.length >= 1);
  assert.equal(events[0].type, 'EVENT_TYPE_SNAPSHOT');
  assert.deepEqual(
    events.map((e) => Number(e.sequence)),
    events.map((_, i) => i + 1),
  );
  for (const event of events.slice(1)) assert.notEqual(event.type, 'EVENT_TYPE_SNAPSHOT');
  for (const event of events) assert.equal(event.task.task_id, taskId);
  const terminal = new Set(['TASK_STATE_COMPLETED', 'TASK_STATE_FAILED', 'TASK_STATE_CANCELED']);
  for (const event of events.slice(0, -1)) assert.ok(!terminal.has(event.task.state));
  const last = events.at(-1).task;
  assert.equal(last.state, 'TASK_STATE_COMPLETED');
  assert.match(last.result.url, /^http/);
  const expires = Number(last.result.url_expire_time.seconds) * 1000;
  assert.ok(expires > Date.now() + 23 * 3600 * 1000, 'the URL is valid for 24 h');
  return last;
}

function download(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, { timeout: 10_000 }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          res.statusCode === 200 ? resolve(Buffer.concat(chunks).toString('utf8')) : reject(new Error(`HTTP ${res.statusCode}`)),
        );
      })
      .on('error', reject);
  });
}

const jsonLines = (text) =>
  text
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line));

/** google.protobuf.Value / Struct (as proto-loader gives them) to plain JSON. */
function fromValue(value) {
  switch (value.kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
    case 'stringValue':
    case 'boolValue':
      return value[value.kind];
    case 'structValue':
      return fromStruct(value.structValue);
    case 'listValue':
      return (value.listValue.values || []).map(fromValue);
    default:
      throw new Error(`unknown Value kind ${value.kind}`);
  }
}
const fromStruct = (struct) => Object.fromEntries(Object.entries(struct.fields || {}).map(([k, v]) => [k, fromValue(v)]));

/** The google.rpc.Status in an error's trailers, with its details decoded by type name. */
function statusDetails(err) {
  const [raw] = err.metadata.get('grpc-status-details-bin');
  assert.ok(raw, 'every error carries grpc-status-details-bin');
  const Status = statusTypes.lookupType('google.rpc.Status');
  const status = Status.decode(raw);
  assert.equal(status.code, err.code);
  const details = {};
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const type = statusTypes.lookupType(typeName);
    details[type.name] = type.toObject(type.decode(any.value), { defaults: true });
  }
  assert.equal(details.ErrorInfo.domain, 'stream-export');
  return details;
}

describe('health', () => {
  test('Check reports SERVING for the server and the export service', async () => {
    const healthClient = new Health(server.address, grpc.credentials.createInsecure());
    try {
      for (const service of ['', SERVICE]) {
        const reply = await new Promise((resolve, reject) =>
          healthClient.Check({ service }, deadline(), (err, r) => (err ? reject(err) : resolve(r))),
        );
        assert.equal(reply.status, 'SERVING');
      }
    } finally {
      healthClient.close();
    }
  });
});

describe('channel exports', () => {
  test('ExportChannels v1, watched to completion; the file is one JSON document', async () => {
    const reply = await unary('ExportChannels', {
      channels: [{ type: 'messaging', id: 'general' }],
      version: 'EXPORT_FORMAT_VERSION_V1',
      request_id: randomUUID(),
    });
    assert.match(reply.task_id, /^[0-9a-f-]{36}$/);
    const { events } = await watch(reply.task_id);
    const task = checkCompletedStream(reply.task_id, events);
    const document = JSON.parse(await download(task.result.url));
    assert.deepEqual(
      document.channels.map((c) => c.channel.id),
      ['general'],
    );
    assert.ok(document.channels[0].messages.length > 0);
  });

  test('ExportChannels v2 with a message window; the file is JSON lines inside the window', async () => {
    const since = Date.parse('2024-02-01T00:00:00Z');
    const until = Date.parse('2024-03-01T00:00:00Z');
    const reply = await unary('ExportChannels', {
      channels: [
        {
          type: 'messaging',
          id: 'general',
          messages_since: { seconds: String(since / 1000), nanos: 0 },
          messages_until: { seconds: String(until / 1000), nanos: 0 },
        },
      ],
      include_truncated_messages: true,
      version: 'EXPORT_FORMAT_VERSION_V2',
    });
    const { events } = await watch(reply.task_id);
    const task = checkCompletedStream(reply.task_id, events);
    assert.match(task.result.url, /\.jsonl/);
    const lines = jsonLines(await download(task.result.url));
    const messages = lines.filter((l) => l.type === 'message');
    assert.ok(lines.some((l) => l.type === 'channel'));
    assert.ok(messages.length > 0);
    for (const { item } of messages) {
      const created = Date.parse(item.created_at);
      assert.ok(since < created && created <= until, item.created_at);
    }
  });
});

describe('user exports', () => {
  test('ExportUsers, then GetTask until it completes', async () => {
    const reply = await unary('ExportUsers', { user_ids: ['user-01', 'user-02'], request_id: randomUUID() });
    const end = Date.now() + DEADLINE_MS;
    let task;
    for (;;) {
      task = await unary('GetTask', { task_id: reply.task_id });
      assert.equal(task.task_id, reply.task_id);
      assert.ok(Number(task.create_time.seconds) > 0);
      if (task.state === 'TASK_STATE_COMPLETED') break;
      assert.ok(['TASK_STATE_WAITING', 'TASK_STATE_PENDING', 'TASK_STATE_RUNNING'].includes(task.state), task.state);
      assert.ok(Date.now() < end, 'the users export did not complete');
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(task.upstream_status, 'completed');
    const users = jsonLines(await download(task.result.url))
      .filter((l) => l.type === 'user')
      .map((l) => l.item.id);
    assert.deepEqual(users.sort(), ['user-01', 'user-02']);
  });

  test('ExportUser keeps custom and nested fields', async () => {
    const reply = await unary('ExportUser', { user_id: 'user-01' });
    const user = fromStruct(reply.user);
    assert.equal(user.id, 'user-01');
    assert.equal(typeof user.team, 'string');
    assert.ok(user.team);
    assert.ok(user.profile.location.city && user.profile.location.country);
    assert.ok(Array.isArray(user.profile.languages));
    const messages = reply.messages.map(fromStruct);
    assert.ok(messages.length > 0);
    for (const message of messages) {
      assert.ok(message.id && message.cid);
      assert.equal(message.user, null, 'JSON null survives as NullValue');
    }
    for (const reaction of reply.reactions.map(fromStruct)) assert.equal(reaction.user_id, 'user-01');
  });

  test('WatchTask of a finished task is one COMPLETED snapshot', async () => {
    const reply = await unary('ExportUsers', { user_ids: ['user-03'] });
    checkCompletedStream(reply.task_id, (await watch(reply.task_id)).events);
    const { events } = await watch(reply.task_id);
    checkCompletedStream(reply.task_id, events);
    assert.equal(events.length, 1);
  });
});

describe('errors, decoded from grpc-status-details-bin', () => {
  test('an invalid channel id is INVALID_ARGUMENT with a BadRequest for channels[0].id', async () => {
    const err = await failing('ExportChannels', { channels: [{ type: 'messaging', id: 'not a valid id' }] });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    const details = statusDetails(err);
    assert.equal(details.ErrorInfo.reason, 'INVALID_REQUEST');
    assert.deepEqual(
      details.BadRequest.fieldViolations.map((v) => v.field),
      ['channels[0].id'],
    );
  });

  test('an unknown task is NOT_FOUND with TASK_NOT_FOUND, for GetTask and WatchTask', async () => {
    const taskId = randomUUID();
    const err = await failing('GetTask', { task_id: taskId });
    assert.equal(err.code, grpc.status.NOT_FOUND);
    assert.equal(statusDetails(err).ErrorInfo.reason, 'TASK_NOT_FOUND');

    const watchErr = await watch(taskId).then(
      () => assert.fail('WatchTask should have failed'),
      (e) => e,
    );
    assert.equal(watchErr.code, grpc.status.NOT_FOUND);
    assert.equal(statusDetails(watchErr).ErrorInfo.reason, 'TASK_NOT_FOUND');
  });

  test('heavy-user is FAILED_PRECONDITION with USER_EXPORT_TOO_LARGE', async () => {
    const err = await failing('ExportUser', { user_id: 'heavy-user' });
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(statusDetails(err).ErrorInfo.reason, 'USER_EXPORT_TOO_LARGE');
  });
});

describe('reading an export', () => {
  /** Reads a ReadExport stream to its end; resolves to the records. */
  function readExport(taskId, startIndex = 0) {
    return new Promise((resolve, reject) => {
      const records = [];
      const call = client.ReadExport({ task_id: taskId, start_index: startIndex }, deadline());
      call.on('data', (record) => records.push(record));
      call.on('error', reject);
      call.on('status', (status) => {
        if (status.code === grpc.status.OK) resolve(records);
      });
    });
  }

  test('ReadExport streams every record of a completed export, in order, and resumes by index', async () => {
    const reply = await unary('ExportChannels', {
      channels: [{ type: 'messaging', id: 'general' }],
      version: 'EXPORT_FORMAT_VERSION_V2',
    });
    const { events } = await watch(reply.task_id);
    const task = checkCompletedStream(reply.task_id, events);
    const expected = jsonLines(await download(task.result.url));

    const records = await readExport(reply.task_id);
    assert.deepEqual(
      records.map((r) => Number(r.index)),
      expected.map((_, i) => i),
    );
    assert.deepEqual(
      records.map((r) => ({ type: r.kind, item: fromStruct(r.item) })),
      expected,
    );
    const tail = await readExport(reply.task_id, expected.length - 1);
    assert.equal(tail.length, 1);
    assert.deepEqual(fromStruct(tail[0].item), expected.at(-1).item);
  });

  /** Reads a ReadExport stream with RECORD_ENCODING_JSON to its end; resolves to the messages. */
  function readExportJson(taskId, startIndex = 0) {
    return new Promise((resolve, reject) => {
      const messages = [];
      const request = { task_id: taskId, start_index: startIndex, encoding: 'RECORD_ENCODING_JSON' };
      const call = client.ReadExport(request, deadline());
      call.on('data', (message) => messages.push(message));
      call.on('error', reject);
      call.on('status', (status) => {
        if (status.code === grpc.status.OK) resolve(messages);
      });
    });
  }

  /** The JSON texts of JSON messages, checking each message's index: the count of records before it. */
  function jsonTexts(messages, startIndex) {
    const texts = [];
    for (const message of messages) {
      assert.equal(Number(message.index), startIndex + texts.length, 'a message starts at the records before it');
      assert.equal(message.kind, '', 'no kind under RECORD_ENCODING_JSON');
      assert.equal(message.item, null, 'no Struct under RECORD_ENCODING_JSON');
      assert.ok(message.json.length > 0, 'a message carries at least one record');
      for (const json of message.json) {
        assert.ok(Buffer.isBuffer(json));
        texts.push(json.toString('utf8'));
      }
    }
    return texts;
  }

  test('ReadExport with RECORD_ENCODING_JSON yields the same records as Structs, as JSON text', async () => {
    for (const version of ['EXPORT_FORMAT_VERSION_V2', 'EXPORT_FORMAT_VERSION_V1']) {
      const reply = await unary('ExportChannels', {
        channels: [{ type: 'messaging', id: 'general' }],
        version,
        export_users: true,
      });
      const { events } = await watch(reply.task_id);
      const task = checkCompletedStream(reply.task_id, events);

      const structs = (await readExport(reply.task_id)).map((r) => ({ type: r.kind, item: fromStruct(r.item) }));
      assert.ok(structs.length >= 2, `${version}: ${structs.length} records`);
      const texts = jsonTexts(await readExportJson(reply.task_id), 0);
      const records = texts.map((text) => JSON.parse(text));
      for (const record of records) assert.deepEqual(Object.keys(record), ['type', 'item'], version);
      // Numbers are doubles on both sides (JSON.parse, google.protobuf.Value).
      assert.deepEqual(records, structs, `${version}: record for record the Struct encoding's`);
      if (version === 'EXPORT_FORMAT_VERSION_V2') {
        const lines = (await download(task.result.url)).split('\n').filter((line) => line.trim());
        assert.deepEqual(texts, lines, 'a V2 line exactly as the file holds it');
      }

      // Resuming at a record: exactly the rest, numbered from there.
      const start = structs.length - 2;
      const tail = jsonTexts(await readExportJson(reply.task_id, start), start);
      assert.deepEqual(tail, texts.slice(start), `${version}: resumed at ${start}`);
    }
  });
});

describe('the task list', () => {
  /** Every page of ListTasks with the given page size: no page larger, no task twice. */
  async function listAll(pageSize) {
    const tasks = [];
    let token = '';
    for (let pages = 0; pages < 10_000; pages++) {
      const reply = await unary('ListTasks', { page_size: pageSize, page_token: token });
      assert.ok(reply.tasks.length <= pageSize, `${reply.tasks.length} tasks in a page of ${pageSize}`);
      tasks.push(...reply.tasks);
      if (!reply.next_page_token) {
        const ids = tasks.map((t) => t.task_id);
        assert.equal(new Set(ids).size, ids.length, 'a task listed twice');
        return tasks;
      }
      assert.notEqual(reply.next_page_token, token);
      token = reply.next_page_token;
    }
    assert.fail('ListTasks: more than 10000 pages');
  }

  const nanos = (ts) => BigInt(ts.seconds) * 1_000_000_000n + BigInt(ts.nanos);

  test('ListTasks lists the submitted tasks, newest first, and paginates', async () => {
    const channelsRequestId = randomUUID();
    const channels = await unary('ExportChannels', {
      channels: [{ type: 'messaging', id: 'general' }],
      version: 'EXPORT_FORMAT_VERSION_V2',
      request_id: channelsRequestId,
    });
    const usersRequestId = randomUUID();
    const users = await unary('ExportUsers', { user_ids: ['user-01'], request_id: usersRequestId });

    const tasks = await listAll(1000);
    const ids = tasks.map((t) => t.task_id);
    const channelsAt = ids.indexOf(channels.task_id);
    const usersAt = ids.indexOf(users.task_id);
    assert.ok(channelsAt >= 0, 'the ExportChannels task is listed');
    assert.ok(usersAt >= 0, 'the ExportUsers task is listed');
    assert.ok(usersAt < channelsAt, 'newest first');

    const channelsRecord = tasks[channelsAt];
    assert.equal(channelsRecord.rpc, 'ExportChannels');
    assert.equal(channelsRecord.owner, 'anonymous');
    assert.equal(channelsRecord.submit, 'export_channels');
    assert.deepEqual(
      channelsRecord.export_channels.channels.map((c) => [c.type, c.id]),
      [['messaging', 'general']],
    );
    assert.equal(channelsRecord.export_channels.version, 'EXPORT_FORMAT_VERSION_V2');
    assert.equal(channelsRecord.export_channels.request_id, channelsRequestId);
    const usersRecord = tasks[usersAt];
    assert.equal(usersRecord.rpc, 'ExportUsers');
    assert.equal(usersRecord.owner, 'anonymous');
    assert.equal(usersRecord.submit, 'export_users');
    assert.deepEqual(usersRecord.export_users.user_ids, ['user-01']);
    assert.equal(usersRecord.export_users.request_id, usersRequestId);
    for (const task of tasks) assert.ok(task.create_time && Number(task.create_time.seconds) > 0, task.task_id);
    for (let i = 1; i < tasks.length; i++) {
      assert.ok(nanos(tasks[i].create_time) <= nanos(tasks[i - 1].create_time), 'newest first');
    }

    // page_size=1: a next_page_token, and the next page continues with another task.
    const first = await unary('ListTasks', { page_size: 1 });
    assert.equal(first.tasks.length, 1);
    assert.ok(first.next_page_token);
    const second = await unary('ListTasks', { page_size: 1, page_token: first.next_page_token });
    assert.equal(second.tasks.length, 1);
    assert.notEqual(second.tasks[0].task_id, first.tasks[0].task_id);
    // Every page of one, walked to the end, is the same list as one large page.
    assert.deepEqual(
      (await listAll(1)).map((t) => t.task_id),
      ids,
    );
  });

  test('ListTasks rejects a negative page size and a foreign token with INVALID_ARGUMENT', async () => {
    for (const [field, request] of [
      ['page_size', { page_size: -1 }],
      ['page_token', { page_token: 'not-a-page-token' }],
    ]) {
      const err = await failing('ListTasks', request);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      const details = statusDetails(err);
      assert.equal(details.ErrorInfo.reason, 'INVALID_REQUEST');
      assert.deepEqual(
        details.BadRequest.fieldViolations.map((v) => v.field),
        [field],
      );
    }
  });
});

describe('export jobs', () => {
  // The channels of the emulator's data set that a plain export includes (messaging:archived is
  // soft-deleted; team:firehose holds the heavy user's ten thousand messages).
  const JOB_CHANNELS = [
    ['messaging', 'general'],
    ['messaging', 'truncated'],
    ['messaging', 'dm-a'],
    ['messaging', 'dm-b'],
    ['messaging', 'dm-c'],
    ['livestream', 'launch'],
    ['team', 'engineering'],
    ['commerce', 'order-1001'],
    ['commerce', 'order-1002'],
  ];
  const TERMINAL = new Set(['EXPORT_JOB_STATE_SUCCEEDED', 'EXPORT_JOB_STATE_FAILED', 'EXPORT_JOB_STATE_CANCELLED']);

  /** Reads a WatchExportJob stream to its end and checks the stream's guarantees; resolves to the events. */
  function watchJob(jobId) {
    const events = [];
    return new Promise((resolve, reject) => {
      const call = client.WatchExportJob({ job_id: jobId }, { deadline: Date.now() + 2 * DEADLINE_MS });
      call.on('data', (event) => events.push(event));
      call.on('error', (err) => reject(Object.assign(err, { events })));
      call.on('status', (status) => {
        if (status.code === grpc.status.OK) resolve(events);
      });
    }).then(() => {
      assert.ok(events.length >= 1, 'a stream has at least its snapshot');
      assert.equal(events[0].type, 'EVENT_TYPE_SNAPSHOT');
      assert.deepEqual(
        events.map((e) => Number(e.sequence)),
        events.map((_, i) => i + 1),
      );
      for (const event of events.slice(1)) assert.notEqual(event.type, 'EVENT_TYPE_SNAPSHOT');
      for (const event of events) assert.equal(event.job.job_id, jobId);
      for (const event of events.slice(0, -1)) {
        assert.ok(!TERMINAL.has(event.job.state), 'the terminal state comes last');
      }
      return events;
    });
  }

  /** Every page of ListExportJobTasks, one shard a page. */
  async function listShards(jobId) {
    const shards = [];
    let token = '';
    for (let pages = 0; pages < 1000; pages++) {
      const reply = await unary('ListExportJobTasks', { job_id: jobId, page_size: 1, page_token: token });
      assert.ok(reply.tasks.length <= 1, `${reply.tasks.length} shards in a page of 1`);
      shards.push(...reply.tasks);
      if (!reply.next_page_token) return shards;
      assert.notEqual(reply.next_page_token, token);
      token = reply.next_page_token;
    }
    assert.fail('ListExportJobTasks: more than 1000 pages');
  }

  test('a job of a channel list runs to SUCCEEDED, and its shards are ordinary tasks', async () => {
    const since = { seconds: String(Date.parse('2024-01-01T00:00:00Z') / 1000), nanos: 0 };
    const request = {
      channels: { channels: JOB_CHANNELS.map(([type, id]) => ({ type, id })) },
      messages_since: since,
      version: 'EXPORT_FORMAT_VERSION_V2',
      request_id: randomUUID(),
    };
    const job = await unary('CreateExportJob', request);
    assert.match(job.job_id, /^[0-9a-f-]{36}$/);
    assert.equal(job.owner, 'anonymous');
    assert.ok(['EXPORT_JOB_STATE_PLANNING', 'EXPORT_JOB_STATE_RUNNING'].includes(job.state), job.state);
    assert.equal(job.request.selector, 'channels');
    assert.deepEqual(
      job.request.channels.channels.map((c) => [c.type, c.id]),
      JOB_CHANNELS,
    );
    assert.equal(job.request.request_id, request.request_id);
    // A retried create with the same request_id is the same job.
    assert.equal((await unary('CreateExportJob', request)).job_id, job.job_id);

    const events = await watchJob(job.job_id);
    const done = events.at(-1).job;
    assert.equal(done.state, 'EXPORT_JOB_STATE_SUCCEEDED', JSON.stringify(done));
    const shardCount = Math.ceil(JOB_CHANNELS.length / JOB_SHARD_SIZE);
    const { progress } = done;
    const counts = ['channels_total', 'tasks_total', 'tasks_submitted', 'tasks_completed', 'tasks_failed'];
    assert.deepEqual(
      counts.map((name) => Number(progress[name])),
      [JOB_CHANNELS.length, shardCount, shardCount, shardCount, 0],
    );
    assert.ok(done.end_time, 'a finished job has an end time');
    assert.equal(done.error, null);

    // The watch leaves the list out of the request; GetExportJob reads the same job with the
    // request whole; ListExportJobs lists it as the watch shows it.
    assert.deepEqual(done.request.channels.channels, []);
    const whole = { ...done, request: job.request };
    assert.deepEqual(await unary('GetExportJob', { job_id: job.job_id }), whole);
    const listed = [];
    let token = '';
    do {
      const page = await unary('ListExportJobs', { page_size: 10, page_token: token });
      listed.push(...page.jobs);
      token = page.next_page_token;
    } while (token);
    assert.deepEqual(
      listed.filter((j) => j.job_id === job.job_id),
      [done],
    );

    // Its shards, a page each: every channel in one shard, every shard's task completed once.
    const shards = await listShards(job.job_id);
    assert.deepEqual(
      shards.map((s) => s.shard),
      [...Array(shardCount).keys()],
    );
    const exported = shards.flatMap((s) => s.channels.map((c) => [c.type, c.id]));
    assert.deepEqual(exported.map(String).sort(), JOB_CHANNELS.map(String).sort());
    for (const shard of shards) {
      assert.ok(shard.channels.length <= JOB_SHARD_SIZE);
      assert.match(shard.task_id, /^[0-9a-f-]{36}$/);
      assert.equal(shard.state, 'TASK_STATE_COMPLETED');
      assert.equal(shard.attempts, 1);
      assert.deepEqual(shard.earlier_task_ids, []);
      for (const channel of shard.channels) assert.deepEqual(channel.messages_since, since, "the job's window");
    }
    assert.equal(new Set(shards.map((s) => s.task_id)).size, shardCount);

    // A shard's task is an ordinary task: GetTask works on it.
    const last = shards.at(-1);
    const task = await unary('GetTask', { task_id: last.task_id });
    assert.equal(task.task_id, last.task_id);
    assert.equal(task.state, 'TASK_STATE_COMPLETED');
    const lines = jsonLines(await download(task.result.url));
    assert.deepEqual(
      lines
        .filter((l) => l.type === 'channel')
        .map((l) => l.item.id)
        .sort(),
      last.channels.map((c) => c.id).sort(),
    );

    // Cancelling a finished job returns it unchanged.
    assert.deepEqual(await unary('CancelExportJob', { job_id: job.job_id }), done);
    assert.deepEqual(await unary('GetExportJob', { job_id: job.job_id }), whole);
  });

  test('an unknown job is NOT_FOUND with JOB_NOT_FOUND', async () => {
    const err = await failing('GetExportJob', { job_id: randomUUID() });
    assert.equal(err.code, grpc.status.NOT_FOUND);
    assert.equal(statusDetails(err).ErrorInfo.reason, 'JOB_NOT_FOUND');
  });

  test('a job without a selector is INVALID_ARGUMENT with a BadRequest for selector', async () => {
    const err = await failing('CreateExportJob', { version: 'EXPORT_FORMAT_VERSION_V2' });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    const details = statusDetails(err);
    assert.equal(details.ErrorInfo.reason, 'INVALID_REQUEST');
    assert.deepEqual(
      details.BadRequest.fieldViolations.map((v) => v.field),
      ['selector'],
    );
  });

  test('an archived job (archive_uri, verify) writes every shard and a manifest, which VerifyExportJob checks', async () => {
    const folder = path.join(server.archiveRoot, ARCHIVE_ALLOWED, 'jobs');
    const archiveUri = pathToFileURL(folder).href;
    const job = await unary('CreateExportJob', {
      channels: { channels: JOB_CHANNELS.map(([type, id]) => ({ type, id })) },
      version: 'EXPORT_FORMAT_VERSION_V2',
      archive_uri: archiveUri,
      verify: true,
    });
    assert.equal(job.request.archive_uri, archiveUri);
    assert.equal(job.request.verify, true);
    const done = (await watchJob(job.job_id)).at(-1).job;
    assert.equal(done.state, 'EXPORT_JOB_STATE_SUCCEEDED', JSON.stringify(done));
    assert.equal(done.manifest_uri, `${archiveUri}/${job.job_id}/manifest.json`);
    const shardCount = Math.ceil(JOB_CHANNELS.length / JOB_SHARD_SIZE);
    const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

    // Every shard's file is in the archive, under the job's folder, as ListExportJobTasks says.
    const shards = await listShards(job.job_id);
    assert.deepEqual(
      shards.map((s) => s.shard),
      [...Array(shardCount).keys()],
    );
    const keyPrefix = path.join(folder, job.job_id).slice(1); // a file:// key: the path without its first /
    for (const { shard, task_id, archive } of shards) {
      assert.ok(archive, `shard ${shard} has no archive`);
      assert.equal(archive.key, `${keyPrefix}/${String(shard).padStart(5, '0')}-${task_id}.jsonl`);
      assert.match(archive.sha256, /^[0-9a-f]{64}$/);
      const content = fs.readFileSync(path.join('/', archive.key));
      assert.ok(content.length > 0);
      assert.equal(Number(archive.bytes), content.length);
      assert.equal(archive.sha256, sha256(content));
      // The copy is Stream's file, byte for byte.
      const task = await unary('GetTask', { task_id });
      assert.equal(await download(task.result.url), content.toString('utf8'));
    }
    const { progress } = done;
    assert.equal(Number(progress.tasks_total), shardCount);
    assert.equal(Number(progress.tasks_archived), shardCount);
    const archivedBytes = shards.reduce((sum, s) => sum + Number(s.archive.bytes), 0);
    assert.ok(archivedBytes > 0);
    assert.equal(Number(progress.bytes_archived), archivedBytes);

    // The manifest lists the same files; SHA256SUMS beside it, for `sha256sum -c`.
    const manifestPath = fileURLToPath(done.manifest_uri);
    const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
    assert.equal(manifest.format, 'stream-export.manifest.v1');
    assert.equal(manifest.job.job_id, job.job_id);
    assert.deepEqual(
      manifest.files.map((f) => [f.key, f.bytes, f.sha256]),
      shards.map((s) => [s.archive.key, Number(s.archive.bytes), s.archive.sha256]),
    );
    assert.deepEqual(
      fs.readFileSync(path.join(path.dirname(manifestPath), 'SHA256SUMS'), 'utf8').split('\n').filter(Boolean),
      shards.map((s) => `${s.archive.sha256}  ${path.basename(s.archive.key)}`),
    );

    let verified = await unary('VerifyExportJob', { job_id: job.job_id });
    assert.equal(verified.manifest_uri, done.manifest_uri);
    assert.equal(Number(verified.objects_checked), shardCount);
    assert.equal(Number(verified.bytes_checked), archivedBytes);
    assert.deepEqual(verified.mismatches, []);

    // One byte of one archived file overwritten: Verify names that file, and only it.
    const corrupted = shards[1].archive;
    const content = fs.readFileSync(path.join('/', corrupted.key));
    content[content.length >> 1] ^= 0x01;
    fs.writeFileSync(path.join('/', corrupted.key), content);
    verified = await unary('VerifyExportJob', { job_id: job.job_id });
    assert.equal(Number(verified.objects_checked), shardCount);
    assert.deepEqual(
      verified.mismatches.map((m) => [m.key, m.problem]),
      [[corrupted.key, 'PROBLEM_SHA256']],
    );
    const [mismatch] = verified.mismatches;
    assert.deepEqual(
      [Number(mismatch.expected_bytes), Number(mismatch.actual_bytes)],
      [Number(corrupted.bytes), Number(corrupted.bytes)],
    );
    assert.equal(mismatch.expected_sha256, corrupted.sha256);
    assert.equal(mismatch.actual_sha256, sha256(content));
  });

  test('archive refusals: ARCHIVE_NOT_ALLOWED, a BadRequest for archive_uri and verify, NOT_ARCHIVED', async () => {
    const channels = { channels: [{ type: 'messaging', id: 'general' }] };

    // Outside the allowed prefix: PERMISSION_DENIED, the refused URI in the ErrorInfo.
    const outside = pathToFileURL(path.join(server.archiveRoot, 'outside')).href;
    let err = await failing('CreateExportJob', { channels, archive_uri: outside });
    assert.equal(err.code, grpc.status.PERMISSION_DENIED);
    const { ErrorInfo } = statusDetails(err);
    assert.equal(ErrorInfo.reason, 'ARCHIVE_NOT_ALLOWED');
    assert.equal(ErrorInfo.metadata.archive_uri, outside);

    // A malformed URI, and `verify` without an archive: INVALID_ARGUMENT on that field.
    for (const [field, request] of [
      ['archive_uri', { channels, archive_uri: 's3://x/../y' }],
      ['verify', { channels, verify: true }],
    ]) {
      err = await failing('CreateExportJob', request);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT, field);
      const details = statusDetails(err);
      assert.equal(details.ErrorInfo.reason, 'INVALID_REQUEST');
      assert.deepEqual(
        details.BadRequest.fieldViolations.map((v) => v.field),
        [field],
      );
    }

    // A job without an archive has nothing to verify.
    const job = await unary('CreateExportJob', { channels });
    err = await failing('VerifyExportJob', { job_id: job.job_id });
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(statusDetails(err).ErrorInfo.reason, 'NOT_ARCHIVED');
  });
});

describe('export schedules', () => {
  // A schedule's jobs export two of the emulator's channels: one shard each, quick to run.
  const SCHEDULE_CHANNELS = [
    ['messaging', 'general'],
    ['messaging', 'dm-a'],
  ];
  const MICROS = 1_000_000n;
  /** A Timestamp or Duration (seconds as a string, with `longs: String`) in microseconds. */
  const micros = (value) => BigInt(value.seconds) * MICROS + BigInt(Math.trunc(value.nanos / 1000));
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** The jobs ListExportJobs shows for one schedule, every page read. */
  async function scheduleJobs(scheduleId) {
    const jobs = [];
    let token = '';
    for (let pages = 0; pages < 1000; pages++) {
      const page = await unary('ListExportJobs', { page_size: 100, page_token: token });
      jobs.push(...page.jobs.filter((j) => j.schedule_id === scheduleId));
      if (!page.next_page_token) {
        assert.equal(new Set(jobs.map((j) => j.job_id)).size, jobs.length, 'a job listed twice');
        return jobs;
      }
      token = page.next_page_token;
    }
    assert.fail('ListExportJobs: more than 1000 pages');
  }

  /**
   * The jobs of a schedule tile its windows from start_time, one job per window, no gap and no
   * overlap; returns them in window order.
   */
  function checkWindows(schedule, jobs) {
    const sorted = [...jobs].sort((a, b) => {
      const d = micros(a.request.messages_since) - micros(b.request.messages_since);
      return d < 0n ? -1 : d > 0n ? 1 : 0;
    });
    const start = micros(schedule.start_time);
    const step = micros(schedule.interval);
    sorted.forEach((job, k) => {
      const since = micros(job.request.messages_since);
      const until = micros(job.request.messages_until);
      assert.equal(since, start + BigInt(k) * step, `window ${k} starts at ${since} µs`);
      assert.equal(until, since + step - 1n, `window ${k} ends at ${until} µs, want 1 µs before the next`);
      if (k + 1 < sorted.length) assert.equal(until, micros(sorted[k + 1].request.messages_since) - 1n, 'the windows tile');
      assert.equal(job.request.request_id, `schedule:${schedule.schedule_id}:window:${since}`);
      assert.equal(job.owner, schedule.owner);
    });
    return sorted;
  }

  async function waitForScheduleJobs(scheduleId, count, ms = 10_000) {
    const end = Date.now() + ms;
    for (;;) {
      const jobs = await scheduleJobs(scheduleId);
      if (jobs.length >= count) return jobs;
      assert.ok(Date.now() < end, `${jobs.length} jobs of the schedule after ${ms} ms, want ${count}`);
      await sleep(200);
    }
  }

  /** Stops a schedule that a failed test left firing (it may be deleted already). */
  const deleteQuietly = (scheduleId) => unary('DeleteExportSchedule', { schedule_id: scheduleId }).catch(() => {});

  /** The template as the stubs decode it: its window and request_id cleared. */
  function checkTemplate(template) {
    assert.equal(template.selector, 'channels');
    assert.deepEqual(
      template.channels.channels.map((c) => [c.type, c.id, c.messages_since, c.messages_until]),
      SCHEDULE_CHANNELS.map(([type, id]) => [type, id, null, null]),
    );
    assert.equal(template.version, 'EXPORT_FORMAT_VERSION_V2');
    assert.equal(template.messages_since, null, 'the template without its window');
    assert.equal(template.messages_until, null, 'the template without its window');
    assert.equal(template.request_id, '', 'the template without its request_id');
  }

  test('a schedule tiles its windows with jobs, pauses, and is deleted', async () => {
    // Four whole seconds ago: windows of 1 s with no lag, so four are due at once.
    const startSeconds = Math.floor(Date.now() / 1000) - 4;
    const start = { seconds: String(startSeconds), nanos: 0 };
    const request = {
      schedule: {
        // A job request reused as the template: its window and request_id are the schedule's to set.
        template: {
          channels: { channels: SCHEDULE_CHANNELS.map(([type, id]) => ({ type, id })) },
          messages_since: { seconds: String(Date.parse('2024-01-01T00:00:00Z') / 1000), nanos: 0 },
          version: 'EXPORT_FORMAT_VERSION_V2',
          request_id: randomUUID(),
        },
        interval: { seconds: 1, nanos: 0 },
        lag: { seconds: 0, nanos: 0 },
        start_time: start,
      },
      request_id: randomUUID(),
    };
    const schedule = await unary('CreateExportSchedule', request);
    try {
      assert.match(schedule.schedule_id, /^[0-9a-f-]{36}$/);
      assert.equal(schedule.owner, 'anonymous');
      checkTemplate(schedule.template);
      assert.deepEqual(schedule.interval, { seconds: '1', nanos: 0 });
      assert.deepEqual(schedule.lag, { seconds: '0', nanos: 0 });
      assert.deepEqual(schedule.start_time, start);
      assert.deepEqual(schedule.next_window_start, start);
      assert.equal(schedule.windows_started, '0');
      assert.equal(schedule.paused, false);
      assert.ok(Number(schedule.create_time.seconds) > 0 && Number(schedule.update_time.seconds) > 0);
      // A retried create with the same request_id is the same schedule.
      assert.equal((await unary('CreateExportSchedule', request)).schedule_id, schedule.schedule_id);

      // The due windows start: one job each, in window order, tiling time from start_time.
      const jobs = checkWindows(schedule, await waitForScheduleJobs(schedule.schedule_id, 3));
      const first = await unary('GetExportJob', { job_id: jobs[0].job_id });
      assert.equal(first.schedule_id, schedule.schedule_id);
      assert.equal(first.owner, 'anonymous');
      assert.deepEqual(
        first.request.channels.channels.map((c) => [c.type, c.id]),
        SCHEDULE_CHANNELS,
      );
      assert.equal(first.request.version, 'EXPORT_FORMAT_VERSION_V2');
      assert.deepEqual(first.request.messages_since, start);
      assert.deepEqual(first.request.messages_until, { seconds: String(startSeconds), nanos: 999_999_000 });
      assert.equal(first.request.request_id, `schedule:${schedule.schedule_id}:window:${startSeconds}000000`);

      let read = await unary('GetExportSchedule', { schedule_id: schedule.schedule_id });
      assert.ok(BigInt(read.windows_started) >= BigInt(jobs.length), `windows_started ${read.windows_started}`);
      assert.equal(
        micros(read.next_window_start),
        micros(start) + BigInt(read.windows_started) * MICROS,
        'the cursor advanced',
      );
      assert.ok(read.last_job_id);
      assert.deepEqual(read.template, schedule.template);

      const listed = [];
      let token = '';
      for (let pages = 0; pages < 1000; pages++) {
        const page = await unary('ListExportSchedules', { page_size: 1, page_token: token });
        assert.ok(page.schedules.length <= 1);
        listed.push(...page.schedules);
        token = page.next_page_token;
        if (!token) break;
      }
      const mine = listed.filter((s) => s.schedule_id === schedule.schedule_id);
      assert.equal(mine.length, 1, 'ListExportSchedules lists it once');
      assert.deepEqual(mine[0].template, schedule.template);

      // Paused: the answer says so, and no window starts while it is.
      const paused = await unary('UpdateExportSchedule', {
        schedule: { schedule_id: schedule.schedule_id, paused: true },
        update_mask: { paths: ['paused'] },
      });
      assert.equal(paused.paused, true);
      assert.deepEqual([paused.interval, paused.template], [schedule.interval, schedule.template], 'the rest unchanged');
      const before = (await scheduleJobs(schedule.schedule_id)).map((j) => j.job_id).sort();
      await sleep(2000);
      const after = await scheduleJobs(schedule.schedule_id);
      assert.deepEqual(after.map((j) => j.job_id).sort(), before, 'no job started while paused');
      read = await unary('GetExportSchedule', { schedule_id: schedule.schedule_id });
      assert.equal(read.paused, true);
      assert.deepEqual([read.windows_started, paused.windows_started], [String(after.length), String(after.length)], 'one job per window');
      checkWindows(schedule, after);

      // Deleted: Empty, then NOT_FOUND; the jobs it started stay.
      assert.deepEqual(await unary('DeleteExportSchedule', { schedule_id: schedule.schedule_id }), {});
      const err = await failing('GetExportSchedule', { schedule_id: schedule.schedule_id });
      assert.equal(err.code, grpc.status.NOT_FOUND);
      assert.equal(statusDetails(err).ErrorInfo.reason, 'SCHEDULE_NOT_FOUND');
      assert.equal((await unary('GetExportJob', { job_id: jobs[0].job_id })).job_id, jobs[0].job_id);
    } finally {
      await deleteQuietly(schedule.schedule_id);
    }
  });

  test('refusals: a BadRequest for schedule.interval and for update_mask', async () => {
    const template = { channels: { channels: [{ type: 'messaging', id: 'general' }] } };
    const now = { seconds: String(Math.floor(Date.now() / 1000)), nanos: 0 };

    // An interval of 0: INVALID_ARGUMENT on schedule.interval.
    let err = await failing('CreateExportSchedule', {
      schedule: { template, interval: { seconds: 0, nanos: 0 }, start_time: now },
    });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    let details = statusDetails(err);
    assert.equal(details.ErrorInfo.reason, 'INVALID_REQUEST');
    assert.deepEqual(
      details.BadRequest.fieldViolations.map((v) => v.field),
      ['schedule.interval'],
    );

    // An update_mask path that is not a changeable field: INVALID_ARGUMENT on update_mask.
    const schedule = await unary('CreateExportSchedule', {
      schedule: { template, interval: { seconds: 3600, nanos: 0 }, start_time: now, paused: true },
    });
    try {
      assert.equal(schedule.paused, true);
      err = await failing('UpdateExportSchedule', {
        schedule: { schedule_id: schedule.schedule_id, owner: 'someone-else' },
        update_mask: { paths: ['owner'] },
      });
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      details = statusDetails(err);
      assert.equal(details.ErrorInfo.reason, 'INVALID_REQUEST');
      assert.deepEqual(
        details.BadRequest.fieldViolations.map((v) => v.field),
        ['update_mask'],
      );
      const read = await unary('GetExportSchedule', { schedule_id: schedule.schedule_id });
      assert.equal(read.owner, 'anonymous', 'a refused update changes nothing');
    } finally {
      await deleteQuietly(schedule.schedule_id);
    }
  });
});
