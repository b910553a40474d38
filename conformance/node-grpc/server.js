'use strict';
// Starts the real binary (`serve --emulator`) on a free loopback port and loads the stubs
// from proto/ at run time with @grpc/proto-loader: nothing generated is committed.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const health = require('grpc-health-check');

const ROOT = path.resolve(__dirname, '..', '..');
const PROTO = path.join(ROOT, 'proto');
const SERVICE = 'streamexport.v1.ExportService';
// Export jobs cut into shards of 4 (Stream's 25 is the default): the emulator started by
// `serve --emulator` has ten channels, and a job of them then runs several tasks.
const JOB_SHARD_SIZE = 4;
// The one folder, under the server's archive root, where jobs may archive to (`--archive-allow`).
const ARCHIVE_ALLOWED = 'allowed';

const LOADER_OPTIONS = {
  includeDirs: [PROTO],
  keepCase: true, // field names as in the .proto: task_id, not taskId
  longs: String, // uint64 sequence, Timestamp.seconds
  enums: String, // 'TASK_STATE_COMPLETED'
  defaults: true,
  oneofs: true,
};

function loadStubs() {
  const definition = protoLoader.loadSync('streamexport/v1/export.proto', LOADER_OPTIONS);
  const healthDefinition = protoLoader.loadSync(health.protoPath, LOADER_OPTIONS);
  return {
    ExportService: grpc.loadPackageDefinition(definition).streamexport.v1.ExportService,
    Health: grpc.loadPackageDefinition(healthDefinition).grpc.health.v1.Health,
  };
}

/** google.rpc.Status and its details, from the vendored proto/google/rpc files. */
function loadStatusTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(PROTO, target);
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
  return root;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts the binary and waits until the health service says SERVING. Resolves to
 * { address, archiveRoot, stop }: archiveRoot is a folder whose ARCHIVE_ALLOWED subfolder the
 * server lets jobs archive to (`--archive-allow`); the rest of it, not.
 */
async function startServer(Health) {
  const binary = process.env.STREAM_EXPORT_BIN || path.join(ROOT, 'target', 'debug', 'stream-export');
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stream-export-node-'));
  const logPath = path.join(dir, 'server.log');
  // Its own state directory: not the working directory's default, kept from run to run.
  const stateDir = path.join(dir, 'state');
  const archiveRoot = path.join(dir, 'archive');
  const log = fs.openSync(logPath, 'w');
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('STREAM_API_') && !k.startsWith('STREAM_EXPORT_')),
  );
  const args = ['serve', '--emulator', '--listen', address, '--state-dir', stateDir];
  const jobArgs = ['--job-shard-size', String(JOB_SHARD_SIZE)];
  const archiveArgs = ['--archive-allow', pathToFileURL(path.join(archiveRoot, ARCHIVE_ALLOWED)).href];
  const child = spawn(binary, [...args, ...jobArgs, ...archiveArgs], {
    env,
    stdio: ['ignore', log, log],
  });
  fs.closeSync(log);
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = code ?? signal;
  });

  const client = new Health(address, grpc.credentials.createInsecure());
  const deadline = Date.now() + 20_000;
  try {
    for (;;) {
      const serving = await new Promise((resolve) => {
        client.Check({ service: SERVICE }, { deadline: Date.now() + 1000 }, (err, reply) =>
          resolve(!err && reply.status === 'SERVING'),
        );
      });
      if (serving) break;
      if (exited !== null || Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`server did not become healthy (exit ${exited}):\n${fs.readFileSync(logPath, 'utf8')}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    client.close();
  }

  async function stop() {
    if (exited !== null) return;
    const done = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    await done;
    clearTimeout(timer);
    fs.rmSync(stateDir, { recursive: true, force: true });
    fs.rmSync(archiveRoot, { recursive: true, force: true });
  }
  return { address, archiveRoot, stop };
}

module.exports = { SERVICE, JOB_SHARD_SIZE, ARCHIVE_ALLOWED, loadStubs, loadStatusTypes, startServer };
