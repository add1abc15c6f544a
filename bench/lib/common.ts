/**
 * Shared helpers of the benchmarks: servers, schemas, timing, percentiles, child processes.
 * Everything a benchmark creates lives in schemas and Redis prefixes named `pgqbench_*`, which
 * are dropped before and after each run.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import pg from 'pg';
import { Redis } from 'ioredis';

/** Postgres the benchmarks use (same default as the CLI). */
export const DATABASE_URL =
  process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres';
/** Redis the benchmarks use. */
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** The bench/ directory. */
export const BENCH_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
/** The repository root. */
export const ROOT_DIR = join(BENCH_DIR, '..');

/** Wall-clock time in ms with sub-ms precision, comparable across processes of this machine. */
export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Latency summary in ms. */
export interface Latency {
  count: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

/** Nearest-rank percentiles of a list of latencies (ms). */
export function latencyOf(values: number[]): Latency {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number): number =>
    sorted.length === 0
      ? NaN
      : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
  return {
    count: sorted.length,
    p50: round(at(50), 2),
    p95: round(at(95), 2),
    p99: round(at(99), 2),
    max: round(sorted[sorted.length - 1] ?? NaN, 2),
  };
}

/** Rounds to `digits` decimals. */
export function round(value: number, digits = 0): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** A pool on the bench database. */
export function benchPool(max = 4): pg.Pool {
  return new pg.Pool({ connectionString: DATABASE_URL, max, application_name: 'pgq-bench' });
}

/** A Redis connection usable by BullMQ. */
export function benchRedis(): Redis {
  return new Redis(REDIS_URL, { maxRetriesPerRequest: null });
}

/** Drops the given schemas (CASCADE). */
export async function dropSchemas(db: pg.Pool, ...schemas: string[]): Promise<void> {
  for (const schema of schemas) await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
}

/** Deletes every Redis key under `<prefix>:`. */
export async function clearPrefix(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let removed = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) removed += await redis.unlink(...keys);
  } while (cursor !== '0');
  return removed;
}

/** The environment of a pgq-bridge CLI child for a bench schema and prefix. */
export function cliEnv(schema: string, prefix: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    DATABASE_URL,
    REDIS_URL,
    PGQ_SCHEMA: schema,
    PGQ_PREFIX: prefix,
    LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
    LOG_FORMAT: 'json',
  };
}

/** A message a bench child sends its parent. */
export interface ChildMessage {
  type: string;
  [key: string]: unknown;
}

/** A child process running a bench script with an IPC channel. */
export class Child {
  readonly messages: ChildMessage[] = [];
  private waiters: { type: string; resolve: (m: ChildMessage) => void }[] = [];
  private exited: Promise<number | null>;
  stderr = '';

  constructor(readonly process: ChildProcess) {
    process.on('message', (raw) => {
      const message = raw as ChildMessage;
      const waiter = this.waiters.find((w) => w.type === message.type);
      if (waiter) {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        waiter.resolve(message);
      } else this.messages.push(message);
    });
    process.stderr?.on('data', (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString()).slice(-4000);
      if (globalThis.process.env.BENCH_DEBUG) globalThis.process.stderr.write(chunk);
    });
    this.exited = new Promise((resolve) => {
      process.on('exit', (code) => resolve(code));
      // A child that could not be spawned at all (no such binary) never exits.
      process.on('error', (error) => {
        this.stderr += `\n${error.message}`;
        resolve(null);
      });
    });
  }

  /** Waits for the next message of this type (or a buffered one). */
  next(type: string, timeoutMs = 120_000): Promise<ChildMessage> {
    const index = this.messages.findIndex((m) => m.type === type);
    if (index >= 0) return Promise.resolve(this.messages.splice(index, 1)[0]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`child did not send ${type} in ${timeoutMs} ms: ${this.stderr}`)),
        timeoutMs,
      );
      const failed = (code: number | null): void =>
        reject(new Error(`child exited (${code}) before ${type}: ${this.stderr}`));
      void this.exited.then(failed);
      this.waiters.push({
        type,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      });
    });
  }

  send(message: ChildMessage): void {
    this.process.send(message);
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    this.process.kill('SIGTERM');
    const timer = setTimeout(() => this.process.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Forks a TypeScript bench script (run through tsx) with `args`. */
export function forkScript(script: string, args: string[] = [], env?: NodeJS.ProcessEnv): Child {
  const child = fork(join(BENCH_DIR, script), args, {
    execArgv: ['--import', 'tsx'],
    env: env ?? process.env,
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  return new Child(child);
}

/** Runs the built pgq-bridge CLI as a child (no IPC). */
export function spawnCli(args: string[], env: NodeJS.ProcessEnv): Child {
  const child = spawn(process.execPath, [join(ROOT_DIR, 'bin', 'pgq-bridge.js'), ...args], {
    env,
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  return new Child(child);
}

/** Resident set size of a process in MB (Linux /proc), or NaN. */
export async function rssMb(pid: number | undefined): Promise<number> {
  if (!pid) return NaN;
  try {
    const { readFile } = await import('node:fs/promises');
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const match = /VmRSS:\s+(\d+) kB/.exec(status);
    return match ? round(Number(match[1]) / 1024, 1) : NaN;
  } catch {
    return NaN;
  }
}

/** Command-line flags shared by the bench scripts. */
export interface BenchFlags {
  quick: boolean;
  /** Repeat each measurement and keep the median (default 1). */
  rounds: number;
  /** Write the JSON result here as well. */
  json: string | undefined;
  only: string[] | undefined;
}

/** Parses `--quick`, `--rounds N`, `--json FILE`, `--only a,b`. */
export function parseFlags(argv: string[]): BenchFlags {
  const flags: BenchFlags = { quick: false, rounds: 1, json: undefined, only: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--quick') flags.quick = true;
    else if (arg === '--rounds') flags.rounds = Math.max(1, Number(argv[++i]));
    else if (arg === '--json') flags.json = argv[++i];
    else if (arg === '--only') flags.only = argv[++i].split(',');
    else
      throw new Error(`unknown flag ${arg} (known: --quick, --rounds N, --json FILE, --only a,b)`);
  }
  return flags;
}

/** Median of numbers. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** One row of a result table. */
export interface Row {
  [column: string]: string | number | null;
}

/** Prints rows as an aligned text table. */
export function printTable(title: string, rows: Row[]): void {
  if (rows.length === 0) return;
  const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: string | number | null | undefined): string =>
    v === null || v === undefined ? '' : typeof v === 'number' ? formatNumber(v) : v;
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (values: string[]): string =>
    values.map((v, i) => (i === 0 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ');
  console.log(`\n${title}`);
  console.log(line(columns));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const r of rows) console.log(line(columns.map((c) => cell(r[c]))));
}

function formatNumber(v: number): string {
  if (!Number.isFinite(v)) return '-';
  if (Number.isInteger(v)) return String(v);
  if (Math.abs(v) >= 100) return String(Math.round(v));
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** Whether this module is the script node was started with. */
export function isMain(moduleUrl: string): boolean {
  return process.argv[1] !== undefined && fileURLToPath(moduleUrl) === process.argv[1];
}
