/**
 * Ordered delivery: what `ordered: true` costs a consumer (docs/ordering.md).
 *
 * 1. Throughput: a stored backlog of N keyed notifications (keys `k0..k(K-1)` in rotation)
 *    drained by `createListener` + `createWorker` with a no-op handler, concurrency 50, once
 *    unordered and once ordered, for K = 10, 1,000 and 100,000 distinct keys (at most N). The
 *    clock runs from the listener's start to the last handler call. No-op handlers show the
 *    gate's whole overhead; real handlers hide part of it. Target: ordered >= 0.5x unordered
 *    with 1,000 keys. The ordered runs also count order violations (a handler call whose id is
 *    lower than the last one seen for its key): it must be 0.
 * 2. Added latency: notify() at 500/s over 1,000 keys for a few seconds, the same consumer
 *    unordered and ordered; latency is handler start minus the wall time just before notify().
 *
 * Variants alternate (unordered, ordered) per K so machine-load drift hits both alike. The rows
 * are stored with one INSERT ... SELECT (what notify() would write, without its per-call cost).
 *
 * Run: `npm run bench:ordered [-- --quick] [-- --rounds N] [-- --json FILE] [-- --count N]
 * [-- --keys 10,1000] [-- --no-latency]` (`--count`/`--keys`: drains of other sizes, e.g. the
 * 10-key drain at a count it finishes in minutes; `--no-latency`: the drains only).
 * Everything lives in schema `pgqbench_ordered` and Redis prefix `pgqbench_ordered`, removed at
 * the end.
 */
import { writeFile } from 'node:fs/promises';
import {
  createListener,
  createWorker,
  migrate,
  notify,
  type Notification,
  type SingleConsumerDefinition,
} from 'pgq-bridge';
import {
  DATABASE_URL,
  REDIS_URL,
  benchPool,
  benchRedis,
  clearPrefix,
  dropSchemas,
  isMain,
  latencyOf,
  median,
  parseFlags,
  printTable,
  round,
  sleep,
  wallMs,
  type Latency,
} from './lib/common.js';

const SCHEMA = 'pgqbench_ordered';
const PREFIX = 'pgqbench_ordered';
const CONCURRENCY = 50;
const settings = {
  databaseUrl: DATABASE_URL,
  listenDatabaseUrl: DATABASE_URL,
  redisUrl: REDIS_URL,
  schema: SCHEMA,
  prefix: PREFIX,
};

let runNo = 0;

/** A consumer whose handler counts calls and order violations per key. */
function consumer(
  ordered: boolean,
  onCall: (n: Notification) => void,
): SingleConsumerDefinition & { violations: () => number } {
  const id = `c${++runNo}`;
  const last = new Map<string, bigint>();
  let violations = 0;
  return {
    id,
    channels: [id],
    concurrency: CONCURRENCY,
    ordered,
    handle(n: Notification) {
      if (n.key !== null) {
        const id = BigInt(n.id);
        const before = last.get(n.key);
        if (before !== undefined && before > id) violations++;
        last.set(n.key, id);
      }
      onCall(n);
    },
    violations: () => violations,
  };
}

/** One drain: N rows over K keys, unordered or ordered; notifications per second. */
async function drainRun(
  count: number,
  keys: number,
  ordered: boolean,
): Promise<{ perSecond: number; violations: number }> {
  let left = count;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const def = consumer(ordered, () => {
    if (--left === 0) done();
  });
  const worker = createWorker({ settings, consumers: [def] });
  await worker.start();
  const pool = benchPool(1);
  await pool.query(
    `INSERT INTO ${SCHEMA}.notifications (channel, payload, key)
     SELECT $1, jsonb_build_object('i', g), 'k' || (g % $3) FROM generate_series(1, $2) g`,
    [def.id, count, keys],
  );
  await pool.end();
  const listener = createListener({ settings, batchSize: 500 });
  const started = wallMs();
  await listener.start();
  await finished;
  const ms = wallMs() - started;
  await listener.stop();
  await worker.close();
  return { perSecond: round((count / ms) * 1000), violations: def.violations() };
}

/** notify() at `rate`/s for `seconds` over 1,000 keys; handler-start latency. */
async function streamRun(rate: number, seconds: number, ordered: boolean): Promise<Latency> {
  const latencies: number[] = [];
  const total = rate * seconds;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const def = consumer(ordered, (n) => {
    latencies.push(wallMs() - (n.payload as { t: number }).t);
    if (latencies.length === total) done();
  });
  const worker = createWorker({ settings, consumers: [def] });
  await worker.start();
  const listener = createListener({ settings });
  await listener.start();
  const pool = benchPool(8);
  const started = wallMs();
  const sends: Promise<unknown>[] = [];
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - wallMs();
    if (wait > 0) await sleep(wait);
    sends.push(notify(pool, def.id, { t: wallMs() }, { schema: SCHEMA, key: `k${i % 1000}` }));
  }
  await Promise.all(sends);
  await Promise.race([finished, sleep(30_000)]);
  await pool.end();
  await listener.stop();
  await worker.close();
  return latencyOf(latencies);
}

/** What {@link benchOrdered} measured. */
export interface OrderedResult {
  count: number;
  throughput: {
    keys: number;
    unordered: number;
    ordered: number;
    ratio: number;
    violations: number;
  }[];
  latency: {
    rate: number;
    unordered: Latency;
    ordered: Latency;
    addedP50: number;
    addedP99: number;
  };
}

/** The latency figures of a part that did not run (`--no-latency`). */
const NO_LATENCY: Latency = latencyOf([]);

/** Settings of {@link benchOrdered}. */
export interface OrderedOptions {
  /** A small proof that it works: 4,000 notifications, 4 s of stream. */
  quick: boolean;
  /** Rounds of each comparison (they alternate which variant runs first); medians. */
  rounds: number;
  /** Notifications per drain (default 100,000; 4,000 with `quick`). */
  count?: number;
  /** Distinct keys of the drains (default 10, 1,000 and 100,000; each at most `count`). */
  keys?: number[];
  /** Skip the latency part. */
  noLatency?: boolean;
}

/** Runs both parts; `quick` for a small proof that it works. */
export async function benchOrdered(options: OrderedOptions): Promise<OrderedResult> {
  const { quick, rounds } = options;
  const pool = benchPool(1);
  const redis = benchRedis();
  await dropSchemas(pool, SCHEMA);
  await clearPrefix(redis, PREFIX);
  await migrate({ db: pool, schema: SCHEMA });
  try {
    const count = options.count ?? (quick ? 4000 : 100_000);
    const throughput: OrderedResult['throughput'] = [];
    for (const keys of options.keys ?? [10, 1000, 100_000]) {
      const un: number[] = [];
      const or: number[] = [];
      let violations = 0;
      for (let r = 0; r < rounds; r++) {
        // Alternate which variant goes first, so load drift hits both alike.
        for (const ordered of r % 2 === 0 ? [false, true] : [true, false]) {
          const run = await drainRun(count, Math.min(keys, count), ordered);
          (ordered ? or : un).push(run.perSecond);
          if (ordered) violations += run.violations; // an unordered run has no order to keep
        }
      }
      const unordered = median(un);
      const ordered = median(or);
      throughput.push({
        keys: Math.min(keys, count),
        unordered,
        ordered,
        ratio: round(ordered / unordered, 2),
        violations,
      });
    }
    const rate = 500;
    const seconds = quick ? 4 : 20;
    const runs: { unordered: Latency[]; ordered: Latency[] } = { unordered: [], ordered: [] };
    for (let r = 0; r < (options.noLatency ? 0 : rounds); r++) {
      for (const ordered of r % 2 === 0 ? [false, true] : [true, false]) {
        runs[ordered ? 'ordered' : 'unordered'].push(await streamRun(rate, seconds, ordered));
      }
    }
    const med = (all: Latency[]): Latency => ({
      ...all[0],
      p50: median(all.map((l) => l.p50)),
      p99: median(all.map((l) => l.p99)),
    });
    const unordered = runs.unordered.length ? med(runs.unordered) : NO_LATENCY;
    const ordered = runs.ordered.length ? med(runs.ordered) : NO_LATENCY;
    return {
      count,
      throughput,
      latency: {
        rate,
        unordered,
        ordered,
        addedP50: round(ordered.p50 - unordered.p50, 1),
        addedP99: round(ordered.p99 - unordered.p99, 1),
      },
    };
  } finally {
    await dropSchemas(pool, SCHEMA);
    await clearPrefix(redis, PREFIX);
    await pool.end();
    redis.disconnect();
  }
}

/** Prints the tables of a result. */
export function printOrdered(result: OrderedResult): void {
  printTable(
    `ordered vs unordered drain (${result.count} notifications, concurrency ${CONCURRENCY}, no-op handler), per second`,
    result.throughput.map((t) => ({
      'distinct keys': t.keys,
      unordered: t.unordered,
      ordered: t.ordered,
      ratio: t.ratio,
      'order violations': t.violations,
    })),
  );
  const l = result.latency;
  printTable(`handler-start latency at ${l.rate}/s over 1,000 keys, ms`, [
    { consumer: 'unordered', p50: l.unordered.p50, p99: l.unordered.p99 },
    { consumer: 'ordered', p50: l.ordered.p50, p99: l.ordered.p99 },
    { consumer: 'added', p50: l.addedP50, p99: l.addedP99 },
  ]);
}

/** Takes `--name value` out of `argv` (the shared flag parser refuses flags it does not know). */
function takeFlag(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const [, value] = argv.splice(i, 2);
  return value;
}

if (isMain(import.meta.url)) {
  // Also: --count N, --keys 10,1000 (drains of other sizes), --no-latency.
  const argv = process.argv.slice(2);
  const count = takeFlag(argv, 'count');
  const keys = takeFlag(argv, 'keys');
  const noLatency = argv.includes('--no-latency');
  if (noLatency) argv.splice(argv.indexOf('--no-latency'), 1);
  const flags = parseFlags(argv);
  const result = await benchOrdered({
    quick: flags.quick,
    rounds: flags.rounds,
    count: count === undefined ? undefined : Number(count),
    keys: keys?.split(',').map(Number),
    noLatency,
  });
  printOrdered(result);
  if (flags.json) await writeFile(flags.json, JSON.stringify(result, null, 2) + '\n');
}
