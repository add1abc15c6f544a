/**
 * Drain throughput: how fast pgq-bridge empties a stored backlog, next to raw BullMQ moving the
 * same number of jobs, in the same run, on the same servers.
 *
 * - bridge: N rows are stored with `notify()` (not timed); then `createListener` starts and the
 *   clock runs from its start until the last no-op handler of a `createWorker` consumer finished.
 * - raw BullMQ: the clock runs from the first `Queue.addBulk` (batches of the listener's batch
 *   size, one after another, as the listener does) until the last no-op processor of a BullMQ
 *   `Worker` finished. Same job options, job ids, data shape and concurrency as the bridge's jobs.
 *
 * Both sides run in this one process (producer and worker share an event loop), so the
 * comparison is like for like; Postgres and Redis are the servers of DATABASE_URL / REDIS_URL.
 * Runs alternate (raw, bridge, raw, bridge, ...) so machine-load drift hits both alike; the
 * ratio reported is the median of the per-run ratios.
 *
 * Run: `npm run bench:drain [-- --count N] [-- --concurrency N] [-- --batch-size N] [-- --runs N]
 * [-- --listeners N] [-- --remove-on-complete]` (`--listeners`: that many listeners bridge side by
 * side; default 1. `--remove-on-complete`: both sides' jobs have `removeOnComplete: true`, so the
 * bridge's workers write each outcome to the ledger before completing its job).
 * Everything lives in a schema and a Redis prefix named `pgqbench_drain_*`, removed at the end.
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Queue, Worker, type JobsOptions } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import { createListener, createWorker, defineConsumer, migrate } from 'pgq-bridge';

/** Settings of one benchmark run. */
export interface DrainOptions {
  /** Notifications (jobs) per side. */
  count: number;
  /** Worker concurrency, both sides. */
  concurrency: number;
  /** Listener batch size, and the raw side's addBulk size. */
  batchSize: number;
  /** Runs per side (alternating). */
  runs: number;
  /** Listeners bridging side by side in the bridge run (default 1). */
  listeners?: number;
  /** Jobs removed as they complete, both sides (the bridge then writes the ledger first). */
  removeOnComplete?: boolean;
  databaseUrl: string;
  redisUrl: string;
}

/** One side's figures of one run. */
export interface SideResult {
  ms: number;
  perSecond: number;
}

/** What {@link benchDrain} measured. */
export interface DrainResult {
  options: Omit<DrainOptions, 'databaseUrl' | 'redisUrl'>;
  runs: { raw: SideResult; bridge: SideResult; ratio: number; ledgerMs: number }[];
  median: { raw: number; bridge: number; ratio: number };
  target: number;
}

/** The job options pgq-bridge gives a consumer's jobs by default (see consumers.ts). */
const JOB_OPTIONS = {
  attempts: 5,
  backoff: { type: 'exponential' as const, delay: 1000 },
  removeOnComplete: { age: 24 * 3600, count: 10_000 },
  removeOnFail: false,
};

function jobOptions(options: DrainOptions): JobsOptions {
  return options.removeOnComplete ? { ...JOB_OPTIONS, removeOnComplete: true } : JOB_OPTIONS;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function round(value: number, digits = 0): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** A promise resolved by the `count`th call of `tick`. */
function countdown(count: number): { tick: () => void; done: Promise<void> } {
  let left = count;
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  return {
    tick: () => {
      if (--left === 0) resolve();
    },
    done,
  };
}

async function clearPrefix(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await redis.unlink(...keys);
  } while (cursor !== '0');
}

/** Raw BullMQ: addBulk in batches + a Worker with the same concurrency. */
export async function rawRun(
  options: DrainOptions,
  redis: Redis,
  prefix: string,
): Promise<SideResult> {
  const { count, concurrency, batchSize } = options;
  const queue = new Queue('raw', { connection: redis, prefix });
  const finished = countdown(count);
  const worker = new Worker(
    'raw',
    async () => {
      finished.tick();
      return null;
    },
    { connection: redis, prefix, concurrency },
  );
  await worker.waitUntilReady();
  const createdAt = new Date().toISOString();
  const started = performance.now();
  for (let from = 1; from <= count; from += batchSize) {
    const jobs = [];
    for (let id = from; id < from + batchSize && id <= count; id++) {
      const data = {
        id: String(id),
        channel: 'bench',
        payload: `{"i": ${id}}`,
        context: null,
        createdAt,
      };
      jobs.push({ name: 'bench', data, opts: { ...jobOptions(options), jobId: `n${id}` } });
    }
    await queue.addBulk(jobs);
  }
  await finished.done;
  const ms = performance.now() - started;
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  return { ms: round(ms), perSecond: round((count / ms) * 1000) };
}

/** pgq-bridge: a stored backlog drained by createListener + createWorker. */
export async function bridgeRun(
  options: DrainOptions,
  db: pg.Pool,
  schema: string,
  prefix: string,
): Promise<SideResult & { ledgerMs: number }> {
  const { count, concurrency, batchSize, databaseUrl, redisUrl } = options;
  const settings = {
    databaseUrl,
    listenDatabaseUrl: databaseUrl,
    redisUrl,
    schema,
    prefix,
  };
  const finished = countdown(count);
  const worker = createWorker({
    settings,
    consumers: [
      defineConsumer({
        id: 'bench',
        channels: ['bench'],
        concurrency,
        ...(options.removeOnComplete ? { removeOnComplete: true } : {}),
        handle: () => finished.tick(),
      }),
    ],
  });
  await worker.start();
  const s = `"${schema}"`;
  await db.query(`TRUNCATE ${s}.notifications, ${s}.deliveries`);
  await db.query(
    `SELECT ${s}.notify('bench', jsonb_build_object('i', i)) FROM generate_series(1, $1::int) AS i`,
    [count],
  );
  await db.query(`VACUUM ANALYZE ${s}.notifications`);

  const listeners = Array.from({ length: options.listeners ?? 1 }, () =>
    createListener({ settings, batchSize }),
  );
  const started = performance.now();
  await Promise.all(listeners.map((l) => l.start()));
  await finished.done;
  const ms = performance.now() - started;
  // Not part of the figure, but reported: when the ledger had every outcome.
  for (;;) {
    const { rows } = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${s}.deliveries`,
    );
    if (rows[0].n >= count) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const ledgerMs = performance.now() - started;
  await Promise.all(listeners.map((l) => l.stop()));
  await worker.close();
  return { ms: round(ms), perSecond: round((count / ms) * 1000), ledgerMs: round(ledgerMs) };
}

/** Runs the benchmark and returns its figures; cleans up after itself. */
export async function benchDrain(options: DrainOptions): Promise<DrainResult> {
  const tag = randomBytes(4).toString('hex');
  const schema = `pgqbench_drain_${tag}`;
  const prefix = `pgqbench_drain_${tag}`;
  const db = new pg.Pool({ connectionString: options.databaseUrl, max: 2 });
  const redis = new Redis(options.redisUrl, { maxRetriesPerRequest: null });
  const runs: DrainResult['runs'] = [];
  try {
    await migrate({ db, schema });
    for (let i = 0; i < options.runs; i++) {
      const raw = await rawRun(options, redis, prefix);
      await clearPrefix(redis, prefix);
      const { ledgerMs, ...bridge } = await bridgeRun(options, db, schema, prefix);
      await clearPrefix(redis, prefix);
      runs.push({ raw, bridge, ratio: round(bridge.perSecond / raw.perSecond, 3), ledgerMs });
    }
  } finally {
    await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await clearPrefix(redis, prefix).catch(() => undefined);
    await db.end();
    redis.disconnect();
  }
  const { databaseUrl: _d, redisUrl: _r, ...shown } = options;
  return {
    options: shown,
    runs,
    median: {
      raw: median(runs.map((r) => r.raw.perSecond)),
      bridge: median(runs.map((r) => r.bridge.perSecond)),
      ratio: median(runs.map((r) => r.ratio)),
    },
    target: 0.85,
  };
}

function flag(args: string[], name: string, fallback: number): number {
  const i = args.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = Number(args[i + 1]);
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`--${name} expects a positive integer, got ${args[i + 1]}`);
  }
  return value;
}

function printTable(result: DrainResult): void {
  const { count, concurrency, batchSize, listeners } = result.options;
  const rows = result.runs.map((r, i) => [
    String(i + 1),
    `${r.raw.perSecond}`,
    `${r.raw.ms}`,
    `${r.bridge.perSecond}`,
    `${r.bridge.ms}`,
    `${r.ledgerMs}`,
    r.ratio.toFixed(3),
  ]);
  rows.push([
    'median',
    `${result.median.raw}`,
    '',
    `${result.median.bridge}`,
    '',
    '',
    result.median.ratio.toFixed(3),
  ]);
  const head = ['run', 'raw jobs/s', 'raw ms', 'bridge notif/s', 'bridge ms', 'ledger ms', 'ratio'];
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]): string =>
    cells.map((cell, c) => cell.padStart(widths[c])).join('  ');
  console.log(
    `drain of ${count} notifications, concurrency ${concurrency}, batch size ${batchSize}, ` +
      `${listeners ?? 1} listener(s)`,
  );
  console.log(line(head));
  for (const row of rows) console.log(line(row));
  const ok = result.median.ratio >= result.target;
  console.log(
    `ratio ${result.median.ratio.toFixed(3)} (target >= ${result.target}): ${ok ? 'met' : 'NOT met'}`,
  );
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const result = await benchDrain({
    count: flag(args, 'count', 50_000),
    concurrency: flag(args, 'concurrency', 50),
    batchSize: flag(args, 'batch-size', 500),
    runs: flag(args, 'runs', 3),
    listeners: flag(args, 'listeners', 1),
    removeOnComplete: args.includes('--remove-on-complete'),
    databaseUrl: process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres',
    redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  });
  printTable(result);
  console.log(JSON.stringify(result));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((error: unknown) => {
    console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    process.exit(1);
  });
}
