/**
 * Live stream: notifications committed at a fixed rate, one per transaction from 8 connections,
 * and the latency from each commit to the start of its handler.
 *
 * pgq-bridge runs as users deploy it: `pgq-bridge listen` and `pgq-bridge work --worker` (the CLI,
 * default settings; the consumer in procs/stream-consumers/ is a no-op handler with concurrency
 * 50) — separate processes, each measured for memory. The writer is a third process. The reference is raw BullMQ: the same writer calling
 * `Queue.add` at the same rate, the same worker settings, latency from `add` returning to the
 * handler start. Rates: 500/s, 2,000/s and max: pgq-bridge's writers in a closed loop (as fast as
 * 8 connections commit), then raw BullMQ at the rate pgq-bridge reached.
 *
 * Run: `npm run bench:stream [-- --quick]`.
 */
import { join } from 'node:path';
import { createWorker, migrate } from 'pgq-bridge';
import { AlternativesChild, alternativeVersions } from './alternatives.js';
import {
  BENCH_DIR,
  DATABASE_URL,
  REDIS_URL,
  benchPool,
  benchRedis,
  clearPrefix,
  cliEnv,
  dropSchemas,
  forkScript,
  isMain,
  latencyOf,
  median,
  parseFlags,
  printTable,
  round,
  rssMb,
  sleep,
  spawnCli,
  type BenchFlags,
  type Child,
  type Latency,
} from './lib/common.js';

const SCHEMA = 'pgqbench_stream';
const PREFIX = 'pgqbench_stream';
const RAW_PREFIX = 'pgqbench_stream_raw';
const GRAPHILE_SCHEMA = 'pgqbench_stream_graphile';
const PGBOSS_SCHEMA = 'pgqbench_stream_pgboss';
const CLIENTS = 8;
const CONCURRENCY = 50;

/** The systems of the stream, in the order of the first round. */
export type StreamSystem = 'pgq-bridge' | 'raw BullMQ' | 'graphile-worker' | 'pg-boss';
const SYSTEMS: StreamSystem[] = ['pgq-bridge', 'raw BullMQ', 'graphile-worker', 'pg-boss'];

/** One measured run. */
export interface StreamRun {
  system: StreamSystem;
  /** Requested rate (0: closed loop). */
  rate: number;
  /** Writes per second actually committed. */
  written: number;
  /** Handlers started per second over the run (first write to last handler start). */
  handled: number;
  /** Writes whose handler did not start within the tail timeout. */
  missing: number;
  latency: Latency;
  /**
   * pgq-bridge only: commit → job created by the listener (the job's `timestamp`, whole ms), the
   * listener's share of `latency`; the rest is Redis and the worker.
   */
  toJob?: Latency;
  /** Peak RSS of the listen and work processes during the run, MB. */
  rss?: { listen: number; work: number };
}

/** Medians over the rounds of one system at one rate. */
export interface StreamRow {
  system: StreamSystem;
  rate: number;
  /** The Node version the system ran on. */
  node: string;
  rounds: number;
  written: number;
  handled: number;
  /** Summed over the rounds. */
  missing: number;
  p50: number;
  p95: number;
  p99: number;
  /** Every round's p99, in the order they ran. */
  p99s: number[];
  toJobP50?: number;
  toJobP99?: number;
  /** Highest over the rounds. */
  rss?: { listen: number; work: number };
  /** Medians of the per-round ratios to raw BullMQ and graphile-worker at the same rate. */
  vsRaw: { p50: number; p99: number };
  vsGraphile?: { p50: number; p99: number };
}

/** Result of {@link benchStream}. */
export interface StreamResult {
  seconds: number;
  clients: number;
  rounds: number;
  versions: Record<string, string>;
  rows: StreamRow[];
}

interface Pipeline {
  system: StreamSystem;
  node: string;
  /** The process whose handlers record start times (for RSS: `work`). */
  worker?: Child;
  listener?: Child;
  /** What the writer process runs. */
  writer: Record<string, unknown>;
  handled(): Promise<number>;
  collect(): Promise<{ ids: string[]; starts: number[]; added?: number[] }>;
  stop(): Promise<void>;
}

function childPipeline(
  system: StreamSystem,
  worker: Child,
  writer: Record<string, unknown>,
  extra: Partial<Pipeline>,
): Pipeline {
  return {
    system,
    node: process.version,
    worker,
    writer,
    handled: async () => {
      worker.send({ type: 'progress' });
      return (await worker.next('progress')).handled as number;
    },
    collect: async () => {
      worker.send({ type: 'collect' });
      const c = await worker.next('collected');
      return {
        ids: c.ids as string[],
        starts: c.starts as number[],
        added: c.added as number[] | undefined,
      };
    },
    stop: async () => {
      await extra.listener?.stop();
      if (!extra.listener) worker.send({ type: 'stop' });
      await worker.stop();
    },
    ...extra,
  };
}

async function startPipeline(system: StreamSystem): Promise<Pipeline> {
  if (system === 'pgq-bridge') {
    const worker = spawnCli(
      ['work', '--worker', '--consumers-dir', join(BENCH_DIR, 'procs', 'stream-consumers')],
      cliEnv(SCHEMA, PREFIX),
    );
    await worker.next('loaded');
    const listener = spawnCli(['listen'], cliEnv(SCHEMA, PREFIX));
    return childPipeline(
      system,
      worker,
      { mode: 'pgq', schema: SCHEMA, prefix: PREFIX },
      {
        listener,
      },
    );
  }
  if (system === 'raw BullMQ') {
    const worker = forkScript('procs/work.ts');
    worker.send({
      type: 'start',
      mode: 'raw',
      schema: SCHEMA,
      prefix: RAW_PREFIX,
      consumers: [{ id: 'stream', channels: ['stream'], concurrency: CONCURRENCY }],
    });
    await worker.next('ready');
    return childPipeline(system, worker, { mode: 'raw', schema: SCHEMA, prefix: RAW_PREFIX }, {});
  }
  // graphile-worker's task is 'bench'; pg-boss's queue 'stream' (with its NOTIFY wake-up on).
  const schema = system === 'graphile-worker' ? GRAPHILE_SCHEMA : PGBOSS_SCHEMA;
  const queue = system === 'graphile-worker' ? 'bench' : 'stream';
  const alt = await AlternativesChild.start();
  await alt.request({ type: 'install', system, schema, queue, notify: true });
  const sql = (await alt.request({ type: 'enqueue-sql', system, schema, queue })).sql as string;
  await alt.request({ type: 'stream-start', system, schema, queue });
  return {
    system,
    node: alt.node,
    writer: { mode: 'sql', sql, param: system === 'pg-boss' ? 'array' : 'object' },
    handled: async () => (await alt.request({ type: 'progress' })).handled as number,
    collect: async () => {
      const c = await alt.request({ type: 'collect' });
      return { ids: c.ids as string[], starts: c.starts as number[] };
    },
    stop: () => alt.stop(),
  };
}

let rawBase = 0;

async function measure(p: Pipeline, rate: number, seconds: number): Promise<StreamRun> {
  const before = await p.handled();
  const writer = forkScript('procs/writer.ts');
  await writer.next('ready');
  const peak = { listen: 0, work: 0 };
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      if (p.listener) {
        peak.listen = Math.max(peak.listen, await rssMb(p.listener.process.pid));
        peak.work = Math.max(peak.work, await rssMb(p.worker?.process.pid));
      }
      await sleep(250);
    }
  })();
  writer.send({
    type: 'start',
    ...p.writer,
    rate,
    seconds,
    clients: CLIENTS,
    base: rawBase,
  });
  const done = await writer.next('done', (seconds + 60) * 1000);
  const ids = done.ids as string[];
  rawBase += ids.length + 1;
  const times = done.times as number[];
  // Tail: wait for the handlers to catch up (at most 20 s).
  const deadline = performance.now() + 20_000;
  while ((await p.handled()) - before < ids.length && performance.now() < deadline) {
    await sleep(50);
  }
  sampling = false;
  await sampler;
  await writer.stop();
  const collected = await p.collect();
  const startOf = new Map<string, number>();
  const addedOf = new Map<string, number>();
  for (let i = 0; i < collected.ids.length; i++) {
    const id = String(collected.ids[i]);
    if (startOf.has(id)) continue;
    startOf.set(id, collected.starts[i]);
    if (collected.added) addedOf.set(id, collected.added[i]);
  }
  const latencies: number[] = [];
  const toJob: number[] = [];
  let missing = 0;
  let lastStart = 0;
  for (let i = 0; i < ids.length; i++) {
    const started = startOf.get(String(ids[i]));
    if (started === undefined) missing++;
    else {
      latencies.push(started - times[i]);
      lastStart = Math.max(lastStart, started);
      const added = addedOf.get(String(ids[i]));
      if (added !== undefined) toJob.push(added - times[i]);
    }
  }
  const firstWrite = Math.min(...times);
  return {
    system: p.system,
    rate,
    written: round((ids.length / (done.elapsedMs as number)) * 1000),
    handled: round((latencies.length / Math.max(lastStart - firstWrite, 1)) * 1000),
    missing,
    latency: latencyOf(latencies),
    ...(toJob.length > 0 ? { toJob: latencyOf(toJob) } : {}),
    ...(p.listener ? { rss: { listen: peak.listen, work: peak.work } } : {}),
  };
}

function summarize(
  system: StreamSystem,
  node: string,
  rate: number,
  runs: StreamRun[],
  raw: StreamRun[],
  graphile: StreamRun[] | undefined,
): StreamRow {
  const m = (f: (r: StreamRun) => number): number => round(median(runs.map(f)), 2);
  const ratio = (other: StreamRun[], f: (r: StreamRun) => number): number =>
    round(median(runs.map((r, i) => f(r) / f(other[i]))), 2);
  const toJob = runs.every((r) => r.toJob);
  return {
    system,
    rate,
    node,
    rounds: runs.length,
    written: m((r) => r.written),
    handled: m((r) => r.handled),
    missing: runs.reduce((sum, r) => sum + r.missing, 0),
    p50: m((r) => r.latency.p50),
    p95: m((r) => r.latency.p95),
    p99: m((r) => r.latency.p99),
    p99s: runs.map((r) => r.latency.p99),
    ...(toJob ? { toJobP50: m((r) => r.toJob!.p50), toJobP99: m((r) => r.toJob!.p99) } : {}),
    ...(runs[0].rss
      ? {
          rss: {
            listen: Math.max(...runs.map((r) => r.rss!.listen)),
            work: Math.max(...runs.map((r) => r.rss!.work)),
          },
        }
      : {}),
    vsRaw: { p50: ratio(raw, (r) => r.latency.p50), p99: ratio(raw, (r) => r.latency.p99) },
    ...(graphile
      ? {
          vsGraphile: {
            p50: ratio(graphile, (r) => r.latency.p50),
            p99: ratio(graphile, (r) => r.latency.p99),
          },
        }
      : {}),
  };
}

/** Runs the live-stream bench. */
export async function benchStream(flags: BenchFlags): Promise<StreamResult> {
  const seconds = flags.quick ? 3 : 6;
  const rounds = flags.quick ? flags.rounds : Math.max(3, flags.rounds);
  const db = benchPool(2);
  const redis = benchRedis();
  const pipelines = new Map<StreamSystem, Pipeline>();
  try {
    await dropSchemas(db, SCHEMA, GRAPHILE_SCHEMA, PGBOSS_SCHEMA);
    await clearPrefix(redis, PREFIX);
    await clearPrefix(redis, RAW_PREFIX);
    await migrate({ db: DATABASE_URL, schema: SCHEMA });
    // Register the consumer before anything is written ('now' consumers get later rows only).
    const registration = createWorker({
      settings: { databaseUrl: DATABASE_URL, redisUrl: REDIS_URL, schema: SCHEMA, prefix: PREFIX },
      consumers: [{ id: 'stream', channels: ['stream'], handle: () => undefined }],
    });
    await registration.start();
    await registration.close();
    for (const system of SYSTEMS) {
      const p = await startPipeline(system);
      pipelines.set(system, p);
      // Warm-up (not reported): JIT, connections, queues.
      await measure(p, 500, 1);
    }

    const runs = new Map<string, StreamRun[]>();
    const keep = (run: StreamRun, rate: number): void => {
      const key = `${run.system}@${rate}`;
      runs.set(key, [...(runs.get(key) ?? []), run]);
    };
    for (let r = 0; r < rounds; r++) {
      for (const rate of [500, 2000]) {
        for (let i = 0; i < SYSTEMS.length; i++) {
          const system = SYSTEMS[(r + i) % SYSTEMS.length];
          await sleep(1000);
          keep(await measure(pipelines.get(system)!, rate, seconds), rate);
        }
      }
      // Max: pgq-bridge's closed loop, raw BullMQ at the rate it reached (raw first in odd rounds).
      const pgq = pipelines.get('pgq-bridge')!;
      const raw = pipelines.get('raw BullMQ')!;
      await sleep(1000);
      if (r % 2 === 1) {
        const previous = runs.get('pgq-bridge@0')?.at(-1)?.written ?? 3000;
        keep(await measure(raw, previous, seconds), 0);
        await sleep(1000);
        keep(await measure(pgq, 0, seconds), 0);
      } else {
        const a = await measure(pgq, 0, seconds);
        keep(a, 0);
        await sleep(1000);
        keep(await measure(raw, a.written, seconds), 0);
      }
    }
    const rows: StreamRow[] = [];
    for (const rate of [500, 2000, 0]) {
      const raw = runs.get(`raw BullMQ@${rate}`)!;
      const graphile = runs.get(`graphile-worker@${rate}`);
      for (const system of SYSTEMS) {
        const mine = runs.get(`${system}@${rate}`);
        if (!mine) continue;
        const node = pipelines.get(system)!.node;
        rows.push(summarize(system, node, rate, mine, raw, graphile));
      }
    }
    return {
      seconds,
      clients: CLIENTS,
      rounds,
      versions: { ...alternativeVersions(), 'pgq-bridge and raw BullMQ on Node': process.version },
      rows,
    };
  } finally {
    for (const p of pipelines.values()) await p.stop().catch(() => undefined);
    await dropSchemas(db, SCHEMA, GRAPHILE_SCHEMA, PGBOSS_SCHEMA).catch(() => undefined);
    await clearPrefix(redis, PREFIX).catch(() => undefined);
    await clearPrefix(redis, RAW_PREFIX).catch(() => undefined);
    await db.end();
    redis.disconnect();
  }
}

/** Prints the result of {@link benchStream}. */
export function printStream(result: StreamResult): void {
  printTable(
    `Live stream: ${result.clients} connections, one write per transaction, ${result.seconds} s per run, median of ${result.rounds} rounds (order rotating); latency write committed → handler start, ms; ratios: medians of the per-round ratios at the same rate`,
    result.rows.map((r) => ({
      rate: r.rate === 0 ? 'max (closed loop)' : `${r.rate}/s`,
      system: r.system,
      node: r.node,
      'written/s': r.written,
      'handled/s': r.handled,
      missing: r.missing,
      p50: r.p50,
      p95: r.p95,
      p99: r.p99,
      'p99 per round': r.p99s.join(' '),
      'to job p50': r.toJobP50 ?? null,
      'to job p99': r.toJobP99 ?? null,
      'p50 / p99 vs raw': r.system === 'raw BullMQ' ? null : `${r.vsRaw.p50} / ${r.vsRaw.p99}`,
      'p50 / p99 vs graphile-worker':
        r.vsGraphile && r.system !== 'graphile-worker'
          ? `${r.vsGraphile.p50} / ${r.vsGraphile.p99}`
          : null,
      'listen MB': r.rss?.listen ?? null,
      'work MB': r.rss?.work ?? null,
    })),
  );
  console.log(
    `versions: ${Object.entries(result.versions)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
}

if (isMain(import.meta.url)) {
  const flags = parseFlags(process.argv.slice(2));
  const result = await benchStream(flags);
  printStream(result);
  console.log(JSON.stringify({ stream: result }, null, 2));
}
