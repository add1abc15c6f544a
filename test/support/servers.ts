/**
 * Throwaway PostgreSQL and Redis servers for tests: the global setup falls back to them when the
 * configured servers do not answer, and fault tests use them to stop and restart a server under
 * a running bridge.
 *
 * Postgres refuses to run as root, so when this process is root, `initdb` and `postgres` run as
 * the `postgres` OS user (spawned with its uid/gid) on a temp dir chowned to that user.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  accessSync,
  chownSync,
  closeSync,
  constants,
  openSync,
  readdirSync,
  readFileSync,
} from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import pg from 'pg';

export interface ThrowawayPostgres {
  /** `postgres://postgres@127.0.0.1:PORT/test` */
  url: string;
  /** The same server's `postgres` database. */
  adminUrl: string;
  port: number;
  /** The cluster's data directory (PGDATA). */
  dataDir: string;
  /** The temp dir holding the data dir, the socket and the log; removed by `destroy()`. */
  baseDir: string;
  /** Path of the server log. */
  logFile: string;
  /** Whether the postmaster is currently running. */
  readonly running: boolean;
  /**
   * Stops the server. `fast` (default, SIGINT) disconnects clients and checkpoints;
   * `immediate` (SIGQUIT) exits without a checkpoint, like a crash (crash recovery on restart);
   * committed data survives both. Resolves when the postmaster has exited.
   */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Starts the server again on the same port and data dir (stops it first if running). */
  restart(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Stops the server and removes its temp dir. */
  destroy(): Promise<void>;
}

export interface ThrowawayRedis {
  /** `redis://127.0.0.1:PORT` */
  url: string;
  port: number;
  /** The temp dir used as the server's `--dir`; removed by `destroy()`. */
  baseDir: string;
  logFile: string;
  readonly running: boolean;
  /**
   * Stops the server without saving (no RDB, no AOF), so all data is lost. `kill` uses SIGKILL
   * instead of SIGTERM. Resolves when the process has exited.
   */
  stop(mode?: 'term' | 'kill'): Promise<void>;
  /** Starts the server again, empty, on the same port (stops it first if running). */
  restart(mode?: 'term' | 'kill'): Promise<void>;
  /** Stops the server and removes its temp dir. */
  destroy(): Promise<void>;
}

export interface StartOptions {
  /** Port to listen on; a free one by default. */
  port?: number;
  /** How long to wait for the server to accept connections. Default 30 s. */
  startTimeoutMs?: number;
  /**
   * Extra command-line arguments, after the defaults (so they override them), e.g.
   * `['--maxmemory-policy', 'allkeys-lru']`. Only `startRedis` uses them.
   */
  args?: string[];
}

const LOOPBACK = '127.0.0.1';

/** Every child process started here, so they can be killed if this process exits. */
const children = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  children.add(child);
  child.once('exit', () => children.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const c of children) {
        try {
          c.kill('SIGKILL');
        } catch {
          // already gone
        }
      }
    });
  }
}

/** Returns a TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, LOOPBACK, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error('could not determine a free port'));
        return;
      }
      server.close(() => resolve(address.port));
    });
  });
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function isPortOpen(port: number, host = LOOPBACK, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
    socket.connect(port, host);
  });
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function compareVersionsDesc(a: string, b: string): number {
  return Number.parseFloat(b) - Number.parseFloat(a) || b.localeCompare(a);
}

/**
 * Finds an executable on PATH, then in /usr/lib/postgresql/<version>/bin (newest first), then in
 * a few usual install locations. Returns undefined when it is nowhere.
 */
export function findBinary(name: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  const versions = readdirSyncSafe('/usr/lib/postgresql').sort(compareVersionsDesc);
  for (const v of versions) dirs.push(join('/usr/lib/postgresql', v, 'bin'));
  dirs.push('/usr/local/pgsql/bin', '/usr/pgsql/bin', '/opt/homebrew/bin', '/usr/local/bin');
  for (const dir of dirs) {
    const file = join(dir, name);
    if (isExecutable(file)) return file;
  }
  return undefined;
}

function readdirSyncSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

interface RunAs {
  uid: number;
  gid: number;
}

/** The OS user Postgres must run as: `postgres` when we are root, else ourselves (undefined). */
function postgresRunAs(): RunAs | undefined {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return undefined;
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  if (line === undefined) {
    throw new Error(
      'running as root, and Postgres refuses to run as root, but there is no `postgres` OS user ' +
        'to run it as (create one, e.g. `useradd --system postgres`, or run the tests as a normal user)',
    );
  }
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

async function makeBaseDir(prefix: string, owner?: RunAs): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  if (owner !== undefined) chownSync(dir, owner.uid, owner.gid);
  return dir;
}

function tailOfFile(file: string, bytes = 4000): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.length > bytes ? '...' + text.slice(-bytes) : text;
  } catch {
    return '';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs a command to completion; rejects with its output when it fails. */
function runToCompletion(
  file: string,
  args: string[],
  options: { runAs?: RunAs; env?: NodeJS.ProcessEnv; cwd?: string },
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      uid: options.runAs?.uid,
      gid: options.runAs?.gid,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) resolve(output);
      else
        reject(
          new Error(`${file} ${args.join(' ')} failed (${signal ?? `exit ${code}`}):\n${output}`),
        );
    });
  });
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, timeoutMs);
    const onExit = () => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

function exited(child: ChildProcess | undefined): boolean {
  return child === undefined || child.exitCode !== null || child.signalCode !== null;
}

/**
 * Polls `probe` until it resolves, the child exits, or the timeout passes. Rejects with the log
 * tail in the two failure cases.
 */
async function waitUntilReady(
  what: string,
  child: ChildProcess,
  probe: () => Promise<void>,
  timeoutMs: number,
  logFile: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (exited(child)) {
      throw new Error(
        `${what} exited during startup (${child.signalCode ?? `exit ${child.exitCode}`}); log:\n${tailOfFile(logFile)}`,
      );
    }
    try {
      await probe();
      return;
    } catch (error) {
      lastError = error;
    }
    await sleep(100);
  }
  throw new Error(
    `${what} did not accept connections within ${timeoutMs} ms (last error: ${String(
      lastError,
    )}); log:\n${tailOfFile(logFile)}`,
  );
}

async function pgQuery(url: string, sql: string, timeoutMs = 2000): Promise<void> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query(sql);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Postgres binaries needed by {@link startPostgres}; throws a clear error if one is missing. */
export function postgresBinaries(): { initdb: string; postgres: string } {
  const initdb = findBinary('initdb');
  const postgres = findBinary('postgres');
  if (initdb === undefined || postgres === undefined) {
    throw new Error(
      'cannot start a throwaway Postgres: `initdb`/`postgres` not found on PATH or in ' +
        '/usr/lib/postgresql/*/bin (install PostgreSQL, e.g. `apt-get install postgresql`)',
    );
  }
  return { initdb, postgres };
}

/**
 * Creates a fresh cluster in a temp dir (`initdb -A trust -U postgres`), starts it on
 * 127.0.0.1:PORT with fsync off, and creates the database `test`.
 */
export async function startPostgres(options: StartOptions = {}): Promise<ThrowawayPostgres> {
  const bins = postgresBinaries();
  const runAs = postgresRunAs();
  const startTimeoutMs = options.startTimeoutMs ?? 30_000;
  const baseDir = await makeBaseDir('pgq-test-pg-', runAs);
  const dataDir = join(baseDir, 'data');
  const logFile = join(baseDir, 'postgres.log');
  // A neutral environment: no PG* variables from the caller, a locale that always exists.
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    LANG: 'C',
    LC_ALL: 'C',
    TZ: 'UTC',
    HOME: baseDir,
  };

  try {
    await runToCompletion(
      bins.initdb,
      ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-locale', '--no-sync'],
      { runAs, env, cwd: baseDir },
    );
  } catch (error) {
    await rm(baseDir, { recursive: true, force: true });
    throw error;
  }

  let port = options.port ?? (await freePort());
  let child: ChildProcess | undefined;

  const launch = async (): Promise<void> => {
    // The log is opened by us (root or not) and handed to the child as its stdout/stderr.
    const fd = openSync(logFile, 'a');
    try {
      child = spawn(
        bins.postgres,
        [
          '-D',
          dataDir,
          '-k',
          baseDir,
          '-h',
          LOOPBACK,
          '-p',
          String(port),
          '-c',
          'fsync=off',
          '-c',
          'full_page_writes=off',
          '-c',
          'max_connections=200',
        ],
        { env, cwd: baseDir, uid: runAs?.uid, gid: runAs?.gid, stdio: ['ignore', fd, fd] },
      );
    } finally {
      closeSync(fd);
    }
    track(child);
    const started = child;
    await waitUntilReady(
      `throwaway postgres on port ${port}`,
      started,
      () => pgQuery(`postgres://postgres@${LOOPBACK}:${port}/postgres`, 'SELECT 1', 1000),
      startTimeoutMs,
      logFile,
    );
  };

  const stop = async (mode: 'fast' | 'immediate' = 'fast'): Promise<void> => {
    const current = child;
    if (exited(current)) return;
    current!.kill(mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
    if (!(await waitForExit(current!, 30_000))) {
      current!.kill('SIGKILL');
      await waitForExit(current!, 5_000);
    }
    // The postmaster's children may outlive it for a moment; wait until the port is free.
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && (await isPortOpen(port))) await sleep(50);
  };

  // Retry with another port if the first one was taken between freePort() and bind().
  for (let attempt = 1; ; attempt++) {
    try {
      await launch();
      break;
    } catch (error) {
      await stop('immediate').catch(() => {});
      if (
        options.port !== undefined ||
        attempt >= 3 ||
        !/could not (bind|create)/i.test(tailOfFile(logFile))
      ) {
        await rm(baseDir, { recursive: true, force: true });
        throw error;
      }
      port = await freePort();
    }
  }

  const adminUrl = `postgres://postgres@${LOOPBACK}:${port}/postgres`;
  await pgQuery(adminUrl, 'CREATE DATABASE test');

  return {
    url: `postgres://postgres@${LOOPBACK}:${port}/test`,
    adminUrl,
    port,
    dataDir,
    baseDir,
    logFile,
    get running() {
      return !exited(child);
    },
    stop,
    async restart(mode = 'fast') {
      await stop(mode);
      await launch();
    },
    async destroy() {
      await stop('fast');
      await rm(baseDir, { recursive: true, force: true });
    },
  };
}

/** Sends PING over a raw socket and resolves when the answer is +PONG. */
export function redisPing(port: number, host = LOOPBACK, timeoutMs = 1000): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = new Socket();
    let answer = '';
    const finish = (error?: Error) => {
      socket.destroy();
      if (error) reject(error);
      else resolve();
    };
    socket.setTimeout(timeoutMs, () => finish(new Error('timeout')));
    socket.once('error', (e) => finish(e));
    socket.on('data', (d: Buffer) => {
      answer += d.toString();
      if (answer.includes('\r\n')) {
        if (answer.startsWith('+PONG')) finish();
        else finish(new Error(`unexpected answer to PING: ${answer.trim()}`));
      }
    });
    socket.connect(port, host, () => socket.write('PING\r\n'));
  });
}

/**
 * Starts `redis-server` on 127.0.0.1:PORT with persistence off (`--save '' --appendonly no`),
 * `maxmemory-policy noeviction` (what BullMQ needs) and a temp dir as its `--dir`.
 */
export async function startRedis(options: StartOptions = {}): Promise<ThrowawayRedis> {
  const binary = findBinary('redis-server');
  if (binary === undefined) {
    throw new Error(
      'cannot start a throwaway Redis: `redis-server` not found on PATH ' +
        '(install Redis, e.g. `apt-get install redis-server`)',
    );
  }
  const startTimeoutMs = options.startTimeoutMs ?? 15_000;
  const baseDir = await mkdtemp(join(tmpdir(), 'pgq-test-redis-'));
  const logFile = join(baseDir, 'redis.log');
  let port = options.port ?? (await freePort());
  let child: ChildProcess | undefined;

  const launch = async (): Promise<void> => {
    const fd = openSync(logFile, 'a');
    try {
      child = spawn(
        binary,
        [
          '--port',
          String(port),
          '--bind',
          LOOPBACK,
          '--save',
          '',
          '--appendonly',
          'no',
          '--maxmemory-policy',
          'noeviction',
          '--dir',
          baseDir,
          '--daemonize',
          'no',
          ...(options.args ?? []),
        ],
        { cwd: baseDir, stdio: ['ignore', fd, fd] },
      );
    } finally {
      closeSync(fd);
    }
    track(child);
    const started = child;
    await waitUntilReady(
      `throwaway redis on port ${port}`,
      started,
      () => redisPing(port),
      startTimeoutMs,
      logFile,
    );
  };

  const stop = async (mode: 'term' | 'kill' = 'term'): Promise<void> => {
    const current = child;
    if (exited(current)) return;
    // With `--save ''` and no AOF, SIGTERM shuts down without writing anything: data is lost.
    current!.kill(mode === 'term' ? 'SIGTERM' : 'SIGKILL');
    if (!(await waitForExit(current!, 10_000))) {
      current!.kill('SIGKILL');
      await waitForExit(current!, 5_000);
    }
  };

  for (let attempt = 1; ; attempt++) {
    try {
      await launch();
      break;
    } catch (error) {
      await stop('kill').catch(() => {});
      if (
        options.port !== undefined ||
        attempt >= 3 ||
        !/address already in use/i.test(tailOfFile(logFile))
      ) {
        await rm(baseDir, { recursive: true, force: true });
        throw error;
      }
      port = await freePort();
    }
  }

  return {
    url: `redis://${LOOPBACK}:${port}`,
    port,
    baseDir,
    logFile,
    get running() {
      return !exited(child);
    },
    stop,
    async restart(mode = 'term') {
      await stop(mode);
      await launch();
    },
    async destroy() {
      await stop('term');
      await rm(baseDir, { recursive: true, force: true });
    },
  };
}

/** Lists leftover throwaway server dirs (for debugging leaks). */
export async function leftoverServerDirs(): Promise<string[]> {
  const names = await readdir(tmpdir());
  return names.filter((n) => n.startsWith('pgq-test-pg-') || n.startsWith('pgq-test-redis-'));
}
