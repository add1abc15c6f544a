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
const CLIENTS = 8;
const CONCURRENCY = 50;

/** One measured run. */
export interface StreamRun {
  system: 'pgq-bridge' | 'raw BullMQ';
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

/** Result of {@link benchStream}. */
export interface StreamResult {
  seconds: number;
  clients: number;
  runs: (StreamRun & { p50Ratio: number; p99Ratio: number })[];
}

interface Pipeline {
  system: StreamRun['system'];
  worker: Child;
  listener?: Child;
  prefix: string;
}

async function startPipeline(system: StreamRun['system']): Promise<Pipeline> {
  if (system === 'pgq-bridge') {
    const worker = spawnCli(
      ['work', '--worker', '--consumers-dir', join(BENCH_DIR, 'procs', 'stream-consumers')],
      cliEnv(SCHEMA, PREFIX),
    );
    await worker.next('loaded');
    const listener = spawnCli(['listen'], cliEnv(SCHEMA, PREFIX));
    return { system, worker, listener, prefix: PREFIX };
  }
  const worker = forkScript('procs/work.ts');
  worker.send({
    type: 'start',
    mode: 'raw',
    schema: SCHEMA,
    prefix: RAW_PREFIX,
    consumers: [{ id: 'stream', channels: ['stream'], concurrency: CONCURRENCY }],
  });
  await worker.next('ready');
  return { system, worker, prefix: RAW_PREFIX };
}

async function handledSoFar(worker: Child): Promise<number> {
  worker.send({ type: 'progress' });
  return (await worker.next('progress')).handled as number;
}

let rawBase = 0;

async function measure(p: Pipeline, rate: number, seconds: number): Promise<StreamRun> {
  const before = await handledSoFar(p.worker);
  const writer = forkScript('procs/writer.ts');
  await writer.next('ready');
  const peak = { listen: 0, work: 0 };
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      if (p.listener) {
        peak.listen = Math.max(peak.listen, await rssMb(p.listener.process.pid));
      }
      peak.work = Math.max(peak.work, await rssMb(p.worker.process.pid));
      await sleep(250);
    }
  })();
  writer.send({
    type: 'start',
    mode: p.system === 'raw BullMQ' ? 'raw' : 'pgq',
    schema: SCHEMA,
    prefix: p.prefix,
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
  while ((await handledSoFar(p.worker)) - before < ids.length && performance.now() < deadline) {
    await sleep(50);
  }
  sampling = false;
  await sampler;
  await writer.stop();
  p.worker.send({ type: 'collect' });
  const collected = await p.worker.next('collected');
  const startOf = new Map<string, number>();
  const addedOf = new Map<string, number>();
  const cIds = collected.ids as string[];
  const cStarts = collected.starts as number[];
  const cAdded = collected.added as number[] | undefined;
  for (let i = 0; i < cIds.length; i++) {
    if (startOf.has(cIds[i])) continue;
    startOf.set(cIds[i], cStarts[i]);
    if (cAdded) addedOf.set(cIds[i], cAdded[i]);
  }
  const latencies: number[] = [];
  const toJob: number[] = [];
  let missing = 0;
  let lastStart = 0;
  for (let i = 0; i < ids.length; i++) {
    const started = startOf.get(ids[i]);
    if (started === undefined) missing++;
    else {
      latencies.push(started - times[i]);
      lastStart = Math.max(lastStart, started);
      const added = addedOf.get(ids[i]);
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

/** Runs the live-stream bench. */
export async function benchStream(flags: BenchFlags): Promise<StreamResult> {
  const seconds = flags.quick ? 3 : 6;
  const db = benchPool(2);
  const redis = benchRedis();
  const pipelines: Pipeline[] = [];
  try {
    await dropSchemas(db, SCHEMA);
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
    const pgq = await startPipeline('pgq-bridge');
    const raw = await startPipeline('raw BullMQ');
    pipelines.push(pgq, raw);
    // Warm-up (not reported): JIT, connections, queues.
    await measure(pgq, 1000, 1);
    await measure(raw, 1000, 1);

    const runs: StreamResult['runs'] = [];
    for (const rate of [500, 2000, 0]) {
      await sleep(1500);
      const a = await measure(pgq, rate, seconds);
      await sleep(500);
      // At "max", the reference runs at the rate pgq-bridge's writers reached.
      const b = await measure(raw, rate === 0 ? a.written : rate, seconds);
      runs.push({
        ...a,
        p50Ratio: round(a.latency.p50 / b.latency.p50, 2),
        p99Ratio: round(a.latency.p99 / b.latency.p99, 2),
      });
      runs.push({ ...b, p50Ratio: 1, p99Ratio: 1 });
    }
    return { seconds, clients: CLIENTS, runs };
  } finally {
    for (const p of pipelines) {
      await p.listener?.stop();
      if (!p.listener) p.worker.send({ type: 'stop' });
      await p.worker.stop();
    }
    await dropSchemas(db, SCHEMA).catch(() => undefined);
    await clearPrefix(redis, PREFIX).catch(() => undefined);
    await clearPrefix(redis, RAW_PREFIX).catch(() => undefined);
    await db.end();
    redis.disconnect();
  }
}

/** Prints the result of {@link benchStream}. */
export function printStream(result: StreamResult): void {
  printTable(
    `Live stream: ${result.clients} connections, one notification per transaction, ${result.seconds} s per rate; latency commit → handler start, ms (ratio: pgq-bridge / raw BullMQ at the same rate)`,
    result.runs.map((r) => ({
      rate: r.rate === 0 ? 'max (closed loop)' : `${r.rate}/s`,
      system: r.system,
      'written/s': r.written,
      'handled/s': r.handled,
      missing: r.missing,
      p50: r.latency.p50,
      p95: r.latency.p95,
      p99: r.latency.p99,
      'to job p50': r.toJob?.p50 ?? null,
      'to job p99': r.toJob?.p99 ?? null,
      'p50 ratio': r.p50Ratio,
      'p99 ratio': r.p99Ratio,
      'listen MB': r.rss?.listen ?? null,
      'work MB': r.rss?.work ?? null,
    })),
  );
}

if (isMain(import.meta.url)) {
  const flags = parseFlags(process.argv.slice(2));
  const result = await benchStream(flags);
  printStream(result);
  console.log(JSON.stringify({ stream: result }, null, 2));
}
