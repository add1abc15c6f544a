/**
 * Recovery benchmark (issue 3).
 *
 * 1. Reconcile of N stored rows (default 1,000,000), as a user runs it: the built CLI
 *    `pgq-bridge reconcile` in a child process, one consumer subscribed to the rows' channel.
 *    - "unbridged": the listener was down; every row is claimed, enqueued and marked.
 *    - "verify, all queued": `reconcile --verify` over the same rows, every job still in Redis
 *      (a pure scan: the page query, the ledger join and one EXISTS per delivery).
 *    - "verify, Redis wiped": the jobs are deleted from Redis, `reconcile --verify` re-enqueues
 *      every one.
 *    Throughput is rows / the command's own duration (`durationMs` of its summary; node start-up
 *    excluded, shown separately as wall time). Peak RSS is the child's maximum resident set size
 *    (`/usr/bin/time -f %M`, or VmHWM polled from /proc when time(1) is missing).
 * 2. Ledger overhead on drain throughput: the same backlog drained by createListener +
 *    createWorker with a no-op handler, with and without ledger writes (an internal worker
 *    option), alternating in the same run; the figure is the median of each side.
 *
 * Run: `npm run bench:reconcile [-- --rows N] [-- --drain N] [-- --runs N] [-- --json FILE]`.
 * Targets: >= 20,000 rows/s and < 200 MB peak RSS for 1,000,000 rows.
 * Everything lives in a schema and a Redis prefix named `pgqbench_reconcile_*`, removed at the end.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { Queue } from 'bullmq';
import { createListener, createWorker, defineConsumer, migrate } from 'pgq-bridge';
import {
  DATABASE_URL,
  REDIS_URL,
  ROOT_DIR,
  benchPool,
  benchRedis,
  clearPrefix,
  cliEnv,
  dropSchemas,
  isMain,
  median,
  printTable,
  round,
} from './lib/common.js';

/** Settings of the benchmark. */
export interface ReconcileBenchOptions {
  /** Rows reconciled. */
  rows: number;
  /** Notifications per drain run (ledger overhead). */
  drain: number;
  /** Drain runs per side. */
  runs: number;
  /** reconcile --batch-size. */
  batchSize: number;
}

/** One reconcile measurement. */
export interface ReconcileFigure {
  case: string;
  rows: number;
  enqueued: number;
  /** The command's own duration (its summary's durationMs). */
  ms: number;
  rowsPerSecond: number;
  /** Wall time of the whole child process, node start-up included. */
  wallMs: number;
  peakRssMb: number;
  /** 1-minute load average at the end (the machine is shared: figures move with it). */
  load1: number;
}

/** What {@link benchReconcile} measured. */
export interface ReconcileBenchResult {
  options: ReconcileBenchOptions;
  reconcile: ReconcileFigure[];
  /** Raw BullMQ addBulk of the same jobs, batches of 1000, in this process: the ceiling. */
  rawAddBulk: { jobs: number; jobsPerSecond: number };
  drain: {
    withLedger: number[];
    withoutLedger: number[];
    median: { withLedger: number; withoutLedger: number; overheadPercent: number };
  };
  targets: { rowsPerSecond: number; peakRssMb: number };
}

const TIME_BIN = '/usr/bin/time';

/** pgq-bridge's default job options (see consumers.ts), as a registered consumer stores them. */
const JOB_OPTIONS = {
  attempts: 5,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 86400, count: 10000 },
  removeOnFail: false,
};

/** Runs the CLI in a child, measuring its peak RSS; resolves with its summary and figures. */
export async function runReconcileCli(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ summary: Record<string, number>; wallMs: number; peakRssMb: number }> {
  const cli = [process.execPath, join(ROOT_DIR, 'bin', 'pgq-bridge.js'), 'reconcile', ...args];
  const useTime = existsSync(TIME_BIN);
  const command = useTime ? TIME_BIN : cli[0];
  const commandArgs = useTime ? ['-f', 'pgqbench-maxrss-kb=%M', ...cli] : cli.slice(1);
  const started = performance.now();
  const child = spawn(command, commandArgs, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  // Fallback without time(1): the kernel's high-water mark, polled until the process exits.
  let hwmKb = 0;
  const poll = useTime
    ? undefined
    : setInterval(() => {
        try {
          const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
          hwmKb = Math.max(hwmKb, Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0));
        } catch {
          // exited
        }
      }, 50);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearInterval(poll);
  const wallMs = performance.now() - started;
  if (code !== 0) throw new Error(`reconcile exited with ${code}: ${stderr}\n${stdout}`);
  const maxRssKb = useTime
    ? Number(/pgqbench-maxrss-kb=(\d+)/.exec(stderr)?.[1] ?? NaN)
    : hwmKb || NaN;
  const summary = JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as Record<string, number>;
  return { summary, wallMs: round(wallMs), peakRssMb: round(maxRssKb / 1024, 1) };
}

async function measure(
  name: string,
  args: string[],
  rows: number,
  env: NodeJS.ProcessEnv,
): Promise<ReconcileFigure> {
  const { summary, wallMs, peakRssMb } = await runReconcileCli([...args, '--json'], env);
  if (summary.scanned !== rows) {
    throw new Error(`${name}: scanned ${summary.scanned} rows, expected ${rows}`);
  }
  const figure: ReconcileFigure = {
    case: name,
    rows,
    enqueued: summary.enqueued,
    ms: summary.durationMs,
    rowsPerSecond: round((rows / summary.durationMs) * 1000),
    wallMs,
    peakRssMb,
    load1: round(loadavg()[0], 1),
  };
  console.log(
    `  ${name}: ${figure.rowsPerSecond} rows/s, ${figure.enqueued} enqueued, peak RSS ${peakRssMb} MB`,
  );
  return figure;
}

/** Raw BullMQ: addBulk of `count` jobs shaped like reconcile's, batches of 1000; jobs/s. */
async function rawAddBulk(prefix: string, count: number): Promise<number> {
  const redis = benchRedis();
  const queue = new Queue('raw', { connection: redis, prefix });
  const createdAt = new Date().toISOString();
  const started = performance.now();
  for (let from = 1; from <= count; from += 1000) {
    const jobs = [];
    for (let id = from; id < from + 1000 && id <= count; id++) {
      const payload = `{"i": ${id}, "note": "order placed"}`;
      const data = { id: String(id), channel: 'bench', payload, context: null, createdAt };
      jobs.push({
        name: 'bench',
        data: { ...data, replay: true },
        opts: { ...JOB_OPTIONS, jobId: `n${id}` },
      });
    }
    await queue.addBulk(jobs);
  }
  const rate = round((count / (performance.now() - started)) * 1000);
  await queue.obliterate({ force: true });
  await queue.close();
  redis.disconnect();
  return rate;
}

/** One drain of `count` stored rows; resolves with notifications per second. */
async function drainRun(
  db: pg.Pool,
  schema: string,
  prefix: string,
  count: number,
  ledger: boolean,
): Promise<number> {
  const settings = {
    databaseUrl: DATABASE_URL,
    listenDatabaseUrl: DATABASE_URL,
    redisUrl: REDIS_URL,
    schema,
    prefix,
  };
  const s = `"${schema}"`;
  await db.query(`TRUNCATE ${s}.notifications, ${s}.deliveries`);
  let left = count;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const worker = createWorker({
    settings,
    ledger,
    consumers: [
      defineConsumer({
        id: 'drain',
        channels: ['drain'],
        concurrency: 50,
        handle: () => {
          if (--left === 0) finish();
        },
      }),
    ],
  });
  await worker.start();
  await db.query(
    `INSERT INTO ${s}.notifications (channel, payload)
     SELECT 'drain', jsonb_build_object('i', g) FROM generate_series(1, $1::int) g`,
    [count],
  );
  await db.query(`VACUUM ANALYZE ${s}.notifications`);
  const listener = createListener({ settings, batchSize: 500 });
  const started = performance.now();
  await listener.start();
  await finished;
  const ms = performance.now() - started;
  await listener.stop();
  await worker.close(); // flushes the ledger (not timed: it trails the handlers by ~50 ms)
  if (ledger) {
    const { rows } = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${s}.deliveries`,
    );
    if (rows[0].n !== count) throw new Error(`ledger has ${rows[0].n} of ${count} outcomes`);
  }
  return round((count / ms) * 1000);
}

/** Runs the benchmark; cleans up after itself. */
export async function benchReconcile(
  options: ReconcileBenchOptions,
): Promise<ReconcileBenchResult> {
  const tag = randomBytes(4).toString('hex');
  const schema = `pgqbench_reconcile_${tag}`;
  const prefix = `pgqbench_reconcile_${tag}`;
  const db = benchPool(2);
  const redis = benchRedis();
  const env = cliEnv(schema, prefix);
  const figures: ReconcileFigure[] = [];
  const raw = { jobs: 0, jobsPerSecond: NaN };
  const withLedger: number[] = [];
  const withoutLedger: number[] = [];
  const s = `"${schema}"`;
  try {
    await migrate({ db, schema });
    const { rows, batchSize } = options;
    console.log(`storing ${rows} notifications ...`);
    await db.query(`INSERT INTO ${s}.consumers (id, job_options) VALUES ('bench', $1)`, [
      JSON.stringify(JOB_OPTIONS),
    ]);
    await db.query(
      `INSERT INTO ${s}.subscriptions (consumer_id, channel, after_id) VALUES ('bench', 'bench', 0)`,
    );
    await db.query(
      `INSERT INTO ${s}.notifications (channel, payload)
       SELECT 'bench', jsonb_build_object('i', g, 'note', 'order placed') FROM generate_series(1, $1::int) g`,
      [rows],
    );
    await db.query(`VACUUM ANALYZE ${s}.notifications`);
    console.log('reconcile (child process):');
    const batch = ['--batch-size', String(batchSize)];
    figures.push(await measure('unbridged (listener was down)', batch, rows, env));
    figures.push(await measure('verify, all queued', ['--verify', ...batch], rows, env));
    await clearPrefix(redis, prefix);
    figures.push(await measure('verify, Redis wiped', ['--verify', ...batch], rows, env));
    await clearPrefix(redis, prefix);
    const ceilingJobs = Math.min(rows, 200_000);
    raw.jobsPerSecond = await rawAddBulk(prefix, ceilingJobs);
    raw.jobs = ceilingJobs;
    console.log(`  raw BullMQ addBulk (ceiling): ${raw.jobsPerSecond} jobs/s`);
    await db.query(`TRUNCATE ${s}.notifications, ${s}.deliveries, ${s}.subscriptions CASCADE`);
    await db.query(`DELETE FROM ${s}.consumers`);

    console.log(`drain of ${options.drain} notifications, with and without the ledger:`);
    for (let i = 0; i < options.runs; i++) {
      // Alternate so that drift in machine load hits both sides alike.
      const order = i % 2 === 0 ? [true, false] : [false, true];
      for (const ledger of order) {
        const rate = await drainRun(db, schema, prefix, options.drain, ledger);
        (ledger ? withLedger : withoutLedger).push(rate);
        console.log(`  run ${i + 1}, ledger ${ledger ? 'on' : 'off'}: ${rate} notifications/s`);
        await clearPrefix(redis, prefix);
      }
    }
  } finally {
    await dropSchemas(db, schema).catch(() => undefined);
    await clearPrefix(redis, prefix).catch(() => undefined);
    await db.end();
    redis.disconnect();
  }
  const on = median(withLedger);
  const off = median(withoutLedger);
  return {
    options,
    reconcile: figures,
    rawAddBulk: raw,
    drain: {
      withLedger,
      withoutLedger,
      median: {
        withLedger: on,
        withoutLedger: off,
        overheadPercent: round(((off - on) / off) * 100, 1),
      },
    },
    targets: { rowsPerSecond: 20_000, peakRssMb: 200 },
  };
}

function intFlag(args: string[], name: string, fallback: number): number {
  const i = args.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = Number(args[i + 1]);
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`--${name} expects a positive integer, got ${args[i + 1]}`);
  }
  return value;
}

if (isMain(import.meta.url)) {
  const args = process.argv.slice(2);
  const options: ReconcileBenchOptions = {
    rows: intFlag(args, 'rows', 1_000_000),
    drain: intFlag(args, 'drain', 20_000),
    runs: intFlag(args, 'runs', 3),
    batchSize: intFlag(args, 'batch-size', 1000),
  };
  const result = await benchReconcile(options);
  printTable(
    `reconcile of ${options.rows} rows (targets: >= ${result.targets.rowsPerSecond} rows/s, < ${result.targets.peakRssMb} MB)`,
    result.reconcile.map((f) => ({
      case: f.case,
      'rows/s': f.rowsPerSecond,
      enqueued: f.enqueued,
      's (command)': round(f.ms / 1000, 1),
      's (wall)': round(f.wallMs / 1000, 1),
      'peak RSS MB': f.peakRssMb,
      load: f.load1,
    })),
  );
  console.log(
    `raw BullMQ addBulk of the same jobs (${result.rawAddBulk.jobs}, batches of 1000): ${result.rawAddBulk.jobsPerSecond} jobs/s`,
  );
  printTable(`drain of ${options.drain} notifications (median of ${options.runs} runs)`, [
    { ledger: 'on', 'notifications/s': result.drain.median.withLedger },
    { ledger: 'off', 'notifications/s': result.drain.median.withoutLedger },
    { ledger: 'overhead %', 'notifications/s': result.drain.median.overheadPercent },
  ]);
  const jsonIndex = args.indexOf('--json');
  if (jsonIndex >= 0) await writeFile(args[jsonIndex + 1], JSON.stringify(result, null, 2));
  console.log(`\n${JSON.stringify(result)}`);
}
