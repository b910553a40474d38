// The emulator as the official Stream Chat JS SDK (stream-chat) calls it server-side: QueryChannels
// pages (hydrated channels and raw rows), an input error, and one channel export to completion.
// Starts the emulator binary (STREAM_EXPORT_BIN) on a free loopback port.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const net = require('node:net');
const { StreamChat } = require('stream-chat');

const API_KEY = 'js-sdk-conformance-key';
const API_SECRET = 'js-sdk-conformance-secret-0123456789abcdef0123456789';
const SYNTHETIC_CHANNELS = 100;

let emulator;
let client;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

before(async () => {
  const binary = process.env.STREAM_EXPORT_BIN;
  assert.ok(binary, 'STREAM_EXPORT_BIN names the stream-export binary');
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  emulator = spawn(
    binary,
    ['emulator', '--listen', `127.0.0.1:${port}`, '--synthetic-channels', String(SYNTHETIC_CHANNELS)],
    { env: { ...process.env, STREAM_API_KEY: API_KEY, STREAM_API_SECRET: API_SECRET }, stdio: 'ignore' },
  );
  const deadline = Date.now() + 15000;
  for (;;) {
    try {
      const response = await fetch(`${base}/_emulator/counters`);
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('the emulator did not start');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  client = new StreamChat(API_KEY, API_SECRET, { baseURL: base });
});

after(() => {
  if (emulator) emulator.kill('SIGTERM');
});

test('queryChannels lists every channel once by keyset pages on created_at, then cid', async () => {
  const teams = { team: { $in: ['acme', 'globex', 'initech'] } };
  const sort = [{ created_at: 1 }, { cid: 1 }];
  const listed = [];
  let cursor = null;
  for (;;) {
    const filter = cursor
      ? { $and: [teams, { $or: [{ created_at: { $gt: cursor.at } }, { $and: [{ created_at: cursor.at }, { cid: { $gt: cursor.cid } }] }] }] }
      : teams;
    const channels = await client.queryChannels(filter, sort, { limit: 30, state: false });
    listed.push(...channels.map((channel) => channel.cid));
    if (channels.length < 30) break;
    const last = channels[channels.length - 1];
    cursor = { at: last.data.created_at, cid: last.cid };
  }
  assert.equal(listed.length, SYNTHETIC_CHANNELS);
  assert.equal(new Set(listed).size, SYNTHETIC_CHANNELS);
  assert.ok(listed.every((cid) => cid.startsWith('messaging:bulk-')));
});

test('queryChannelsRequest returns rows with state, as the SDK asks by default', async () => {
  const rows = await client.queryChannelsRequest({ cid: 'messaging:general' });
  assert.equal(rows.length, 1);
  assert.equal(rows[0].channel.cid, 'messaging:general');
  assert.ok(rows[0].messages.length > 0);
  assert.ok(rows[0].members.length > 0);
});

test('a limit over 30 is an input error the SDK surfaces with its code', async () => {
  await assert.rejects(client.queryChannelsRequest({ type: 'messaging' }, [], { limit: 31 }), (error) => {
    assert.equal(error.code, 4);
    assert.equal(error.status, 400);
    return true;
  });
});

test('exportChannels runs to a completed task with a result URL', async () => {
  const { task_id: taskId } = await client.exportChannels([{ type: 'messaging', id: 'general' }], { version: 'v2' });
  assert.match(taskId, /^[0-9a-f-]{36}$/);
  const deadline = Date.now() + 30000;
  let status;
  do {
    status = await client.getExportChannelStatus(taskId);
    if (status.status === 'completed') break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  } while (Date.now() < deadline);
  assert.equal(status.status, 'completed');
  const file = await fetch(status.result.url);
  assert.equal(file.status, 200);
  const lines = (await file.text()).trim().split('\n');
  assert.ok(lines.some((line) => JSON.parse(line).type === 'message'));
});
