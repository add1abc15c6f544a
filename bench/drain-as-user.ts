/**
 * The per-job drain measured as a user meets it: rows stored first, then `pgq-bridge listen`
 * started (its start-up counted) with `pgq-bridge work --worker` already running, a handler that
 * does one Redis `INCR` over its own connection (procs/user-consumers/incr.mjs). The reference is
 * raw BullMQ as a user writes it: a `Worker` process with the same handler already running
 * (procs/raw-worker.mjs), then a producer process started (its start-up counted) that adds the
 * same jobs with `addBulk` in batches of the listener's batch size (procs/raw-producer.mjs).
 *
 * The clock runs from spawning `listen` (or the producer) until the `INCR` counter reaches the
 * count; "first" is when the first handler had run (start-up: process, connections, checks, the
 * first claim). Rounds alternate which side runs first; the ratio is the median of the per-round
 * ratios. Unlike bench/drain.ts, every side runs in processes of its own, on the CLI's settings.
 *
 * Run: `node --import tsx bench/drain-as-user.ts [--counts 20000,50000] [--rounds 3]
 * [--concurrency 50] [--batch-size 500] [--packed] [--cpu-prof DIR]` (`--cpu-prof`: every measured
 * process writes a V8 CPU profile into DIR; `--packed`: the pgq-bridge consumer gets
 * `batch: { size: 50, maxWaitMs: 20 }` with the same plain `handle`, packed delivery, against the
 * same raw BullMQ side). Schema and Redis prefix `pgqbench_user`, dropped at the end.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { migrate } from 'pgq-bridge';
import {
  BENCH_DIR,
  Child,
  DATABASE_URL,
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
  sleep,
} from './lib/common.js';

const SCHEMA = 'pgqbench_user';
const PREFIX = 'pgqbench_user';
const RAW_PREFIX = 'pgqbench_user_raw';
const COUNTER = 'pgqbench_user_counter';

/** Settings of {@link benchDrainAsUser}. */
export interface UserDrainOptions {
  counts: number[];
  rounds: number;
  concurrency: number;
  batchSize: number;
  /** The pgq-bridge consumer runs packed (`batch: { size: 50, maxWaitMs: 20 }`, plain handle). */
  packed?: boolean;
  /** Write V8 CPU profiles of every measured process here. */
  cpuProf?: string;
}

/** One side of one round. */
export interface UserDrainSide {
  ms: number;
  perSecond: number;
  /** From the spawn until the first handler had run, ms. */
  firstMs: number;
  /**
   * CPU time the side's two processes spent on the drain (user + system, ms): the worker's since
   * the clock started, the listener's or producer's all of it. Steadier than wall time on a busy
   * machine; Postgres and Redis are not included.
   */
  cpuMs: number;
  /** Of which the worker process's. */
  workerCpuMs: number;
}

/** What {@link benchDrainAsUser} measured. */
export interface UserDrainResult {
  options: UserDrainOptions;
  node: string;
  sizes: {
    count: number;
    rounds: {
      first: 'raw' | 'pgq';
      raw: UserDrainSide;
      pgq: UserDrainSide;
      ratio: number;
      /** raw CPU ms / pgq CPU ms: the throughput ratio on a machine with no spare cores. */
      cpuRatio: number;
    }[];
    median: { raw: number; pgq: number; ratio: number; cpuRatio: number };
  }[];
  target: number;
}

/** CPU time (user + system) a process has used so far, ms (Linux /proc), or NaN. */
async function cpuMsOf(pid: number | undefined): Promise<number> {
  if (!pid) return NaN;
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which is in parentheses and may hold spaces).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name, in ticks.
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** Linux's USER_HZ: /proc reports CPU time in these ticks on every common platform. */
const CLOCK_TICKS = 100;

function spawnNode(args: string[], env: NodeJS.ProcessEnv, cpuProf?: string): Child {
  const prof = cpuProf ? ['--cpu-prof', '--cpu-prof-dir', cpuProf] : [];
  const child = spawn(process.execPath, [...prof, ...args], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Child(child);
}

/** Waits until `queue` has at least one worker and `ready()` holds, then a little longer. */
async function workersUp(queue: Queue, ready: () => Promise<boolean> = async () => true) {
  const deadline = performance.now() + 60_000;
  while ((await queue.getWorkersCount()) < 1 || !(await ready())) {
    if (performance.now() > deadline) throw new Error(`no worker on ${queue.name} after 60 s`);
    await sleep(50);
  }
  // Every Worker of the process connected (a consumer may run several).
  await sleep(500);
}

/** Polls the INCR counter until it reaches `count`; returns [first handler, last handler] ms. */
async function counted(
  started: number,
  count: number,
  child: Child,
): Promise<{ firstMs: number; ms: number }> {
  const redis = benchRedis();
  let firstMs = NaN;
  try {
    const deadline = performance.now() + 600_000;
    for (;;) {
      const n = Number(await redis.get(COUNTER));
      const now = performance.now();
      if (n > 0 && Number.isNaN(firstMs)) firstMs = now - started;
      if (n >= count) return { firstMs, ms: now - started };
      if (now > deadline) throw new Error(`only ${n} of ${count} handled after 600 s`);
      if (child.process.exitCode !== null && child.process.exitCode !== 0) {
        throw new Error(`measured process exited with ${child.process.exitCode}: ${child.stderr}`);
      }
      await sleep(5);
    }
  } finally {
    redis.disconnect();
  }
}

function side(
  count: number,
  t: { firstMs: number; ms: number },
  cpu: { worker: number; feeder: number },
): UserDrainSide {
  return {
    ms: round(t.ms),
    perSecond: round((count / t.ms) * 1000),
    firstMs: round(t.firstMs),
    cpuMs: round(cpu.worker + cpu.feeder),
    workerCpuMs: round(cpu.worker),
  };
}

async function rawRound(options: UserDrainOptions, count: number): Promise<UserDrainSide> {
  const redis = benchRedis();
  const queue = new Queue('raw', { connection: redis, prefix: RAW_PREFIX });
  const env = {
    ...process.env,
    BENCH_PREFIX: RAW_PREFIX,
    BENCH_INCR_KEY: COUNTER,
    BENCH_CONCURRENCY: String(options.concurrency),
    BENCH_COUNT: String(count),
    BENCH_BATCH: String(options.batchSize),
  };
  const worker = spawnNode([join(BENCH_DIR, 'procs', 'raw-worker.mjs')], env, options.cpuProf);
  try {
    await clearPrefix(redis, RAW_PREFIX);
    await redis.set(COUNTER, 0);
    await workersUp(queue);
    const workerCpu = await cpuMsOf(worker.process.pid);
    const started = performance.now();
    const producer = spawnNode(
      [join(BENCH_DIR, 'procs', 'raw-producer.mjs')],
      env,
      options.cpuProf,
    );
    const t = await counted(started, count, producer);
    const cpu = {
      worker: (await cpuMsOf(worker.process.pid)) - workerCpu,
      feeder: await cpuMsOf(producer.process.pid),
    };
    await producer.stop();
    return side(count, t, cpu);
  } finally {
    await worker.stop();
    await clearPrefix(redis, RAW_PREFIX);
    await queue.close();
    redis.disconnect();
  }
}

async function pgqRound(options: UserDrainOptions, count: number): Promise<UserDrainSide> {
  const db = benchPool(2);
  const redis = benchRedis();
  const queue = new Queue('user', { connection: redis, prefix: PREFIX });
  const cli = join(ROOT_DIR, 'bin', 'pgq-bridge.js');
  const env = {
    ...cliEnv(SCHEMA, PREFIX),
    BENCH_INCR_KEY: COUNTER,
    BENCH_CONCURRENCY: String(options.concurrency),
    BENCH_PACKED: options.packed ? '1' : '0',
  };
  const s = `"${SCHEMA}"`;
  let listener: Child | undefined;
  await db.query(`TRUNCATE ${s}.notifications, ${s}.deliveries`);
  await clearPrefix(redis, PREFIX);
  await redis.set(COUNTER, 0);
  const worker = spawnNode(
    [cli, 'work', '--worker', '--consumers-dir', join(BENCH_DIR, 'procs', 'user-consumers')],
    env,
    options.cpuProf,
  );
  try {
    await workersUp(queue, async () => {
      const { rows } = await db.query(`SELECT 1 FROM ${s}.subscriptions WHERE channel = 'user'`);
      return rows.length > 0;
    });
    await db.query(
      `SELECT ${s}.notify('user', jsonb_build_object('i', i)) FROM generate_series(1, $1::int) AS i`,
      [count],
    );
    await db.query(`VACUUM ANALYZE ${s}.notifications`);
    const workerCpu = await cpuMsOf(worker.process.pid);
    const started = performance.now();
    listener = spawnNode(
      [cli, 'listen', '--batch-size', String(options.batchSize)],
      env,
      options.cpuProf,
    );
    const t = await counted(started, count, listener);
    const cpu = {
      worker: (await cpuMsOf(worker.process.pid)) - workerCpu,
      feeder: await cpuMsOf(listener.process.pid),
    };
    return side(count, t, cpu);
  } finally {
    await listener?.stop();
    await worker.stop();
    await queue.close();
    await clearPrefix(redis, PREFIX);
    redis.disconnect();
    await db.end();
  }
}

/** Runs the bench; cleans up after itself. */
export async function benchDrainAsUser(options: UserDrainOptions): Promise<UserDrainResult> {
  const db = benchPool(1);
  const sizes: UserDrainResult['sizes'] = [];
  try {
    await dropSchemas(db, SCHEMA);
    await migrate({ db: DATABASE_URL, schema: SCHEMA });
    for (const count of options.counts) {
      const rounds: UserDrainResult['sizes'][number]['rounds'] = [];
      for (let r = 0; r < options.rounds; r++) {
        const first = r % 2 === 0 ? 'raw' : 'pgq';
        let raw: UserDrainSide;
        let pgq: UserDrainSide;
        if (first === 'raw') {
          raw = await rawRound(options, count);
          pgq = await pgqRound(options, count);
        } else {
          pgq = await pgqRound(options, count);
          raw = await rawRound(options, count);
        }
        rounds.push({
          first,
          raw,
          pgq,
          ratio: round(pgq.perSecond / raw.perSecond, 3),
          cpuRatio: round(raw.cpuMs / pgq.cpuMs, 3),
        });
      }
      sizes.push({
        count,
        rounds,
        median: {
          raw: median(rounds.map((r) => r.raw.perSecond)),
          pgq: median(rounds.map((r) => r.pgq.perSecond)),
          ratio: round(median(rounds.map((r) => r.ratio)), 3),
          cpuRatio: round(median(rounds.map((r) => r.cpuRatio)), 3),
        },
      });
    }
  } finally {
    await dropSchemas(db, SCHEMA).catch(() => undefined);
    await db.end();
    const redis = benchRedis();
    await redis.del(COUNTER).catch(() => undefined);
    redis.disconnect();
  }
  return { options, node: process.version, sizes, target: 0.85 };
}

/** Prints the result of {@link benchDrainAsUser}. */
export function printDrainAsUser(result: UserDrainResult): void {
  printTable(
    `Drain as a user runs it (Node ${result.node}, both sides): stored rows → \`pgq-bridge listen\` started beside a running \`work\` (INCR handler, concurrency ${result.options.concurrency}${result.options.packed ? ', packed: batch { size: 50, maxWaitMs: 20 } with plain handle' : ''}) vs a BullMQ producer started beside a running Worker (same handler); ms from the spawn`,
    result.sizes.flatMap((size) => [
      ...size.rounds.map((r, i) => ({
        count: size.count,
        round: `${i + 1} (${r.first} first)`,
        'raw jobs/s': r.raw.perSecond,
        'raw first ms': r.raw.firstMs,
        'raw CPU ms': r.raw.cpuMs,
        'of it Worker': r.raw.workerCpuMs,
        'pgq notif/s': r.pgq.perSecond,
        'pgq first ms': r.pgq.firstMs,
        'pgq CPU ms': r.pgq.cpuMs,
        'of it work': r.pgq.workerCpuMs,
        ratio: r.ratio,
        'CPU ratio': r.cpuRatio,
      })),
      {
        count: size.count,
        round: 'median',
        'raw jobs/s': size.median.raw,
        'pgq notif/s': size.median.pgq,
        ratio: size.median.ratio,
        'CPU ratio': size.median.cpuRatio,
      },
    ]),
  );
  for (const size of result.sizes) {
    const ok = size.median.ratio >= result.target;
    console.log(
      `${size.count}: ratio ${size.median.ratio} (target >= ${result.target}): ${ok ? 'met' : 'NOT met'}; ` +
        `CPU ratio (raw CPU / pgq CPU, listener + worker processes) ${size.median.cpuRatio}`,
    );
  }
}

function numbers(args: string[], name: string, fallback: number[]): number[] {
  const i = args.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const values = (args[i + 1] ?? '').split(',').map(Number);
  if (values.some((v) => !Number.isInteger(v) || v < 1)) {
    throw new Error(`--${name} expects positive integers, got ${args[i + 1]}`);
  }
  return values;
}

if (isMain(import.meta.url)) {
  const args = process.argv.slice(2);
  const profIndex = args.indexOf('--cpu-prof');
  const result = await benchDrainAsUser({
    counts: numbers(args, 'counts', [20_000, 50_000]),
    rounds: numbers(args, 'rounds', [3])[0],
    concurrency: numbers(args, 'concurrency', [50])[0],
    batchSize: numbers(args, 'batch-size', [500])[0],
    packed: args.includes('--packed'),
    ...(profIndex >= 0 ? { cpuProf: args[profIndex + 1] } : {}),
  });
  printDrainAsUser(result);
  console.log(JSON.stringify(result));
}
