/**
 * pgq-bridge drains with several consumers (fan-out) or batch consumers, in one process like
 * bench/drain.ts: `count` notifications are stored first (not timed), then a listener and a
 * worker start and the clock runs until every consumer's no-op handler saw every notification.
 *
 * Run: `npm run bench:fanout [-- --quick]` (1, 4 and 16 consumers on one channel).
 */
import * as pgqBridge from 'pgq-bridge';
import type { ConsumerDefinition } from 'pgq-bridge';
import {
  DATABASE_URL,
  REDIS_URL,
  benchPool,
  benchRedis,
  clearPrefix,
  dropSchemas,
  isMain,
  parseFlags,
  printTable,
  round,
  type BenchFlags,
} from './lib/common.js';

const SCHEMA = 'pgqbench_fanout';
const PREFIX = 'pgqbench_fanout';

/** A consumer of a drain run. */
export interface DrainConsumer {
  id: string;
  concurrency: number;
  batch?: { size: number; maxWaitMs: number };
  /** With `batch`: a plain `handle` (packed delivery) instead of `handleBatch`. */
  packed?: boolean;
}

/** Figures of one drain run. */
export interface BridgeDrain {
  notifications: number;
  consumers: number;
  ms: number;
  /** Notifications per second (each reached every consumer). */
  perSecond: number;
  /** Handler deliveries per second (notifications × consumers). */
  deliveriesPerSecond: number;
  /** When the ledger held every outcome, ms after the start. */
  ledgerMs: number;
}

/**
 * Stores `count` notifications on channel `bench`, then drains them with one listener and one
 * worker running `consumers` (all subscribed to `bench`).
 */
export async function drainBridge(
  count: number,
  consumers: DrainConsumer[],
  options: {
    batchSize?: number;
    /** Another build of pgq-bridge (bench/ab.ts compares two); default: this package. */
    lib?: typeof pgqBridge;
  } = {},
): Promise<BridgeDrain> {
  const { createListener, createWorker, migrate } = options.lib ?? pgqBridge;
  const db = benchPool(2);
  const redis = benchRedis();
  const settings = {
    databaseUrl: DATABASE_URL,
    listenDatabaseUrl: DATABASE_URL,
    redisUrl: REDIS_URL,
    schema: SCHEMA,
    prefix: PREFIX,
  };
  const expected = count * consumers.length;
  let seen = 0;
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  const tick = (n: number): void => {
    seen += n;
    if (seen >= expected) resolve();
  };
  try {
    await dropSchemas(db, SCHEMA);
    await clearPrefix(redis, PREFIX);
    await migrate({ db: DATABASE_URL, schema: SCHEMA });
    const definitions: ConsumerDefinition[] = consumers.map((c) =>
      c.batch && c.packed
        ? {
            id: c.id,
            channels: ['bench'],
            concurrency: c.concurrency,
            batch: c.batch,
            handle: () => tick(1),
          }
        : c.batch
          ? {
              id: c.id,
              channels: ['bench'],
              concurrency: c.concurrency,
              batch: c.batch,
              handleBatch: (notifications) => tick(notifications.length),
            }
          : { id: c.id, channels: ['bench'], concurrency: c.concurrency, handle: () => tick(1) },
    );
    const worker = createWorker({ settings, consumers: definitions });
    await worker.start();
    await db.query(
      `INSERT INTO ${SCHEMA}.notifications (channel, payload)
       SELECT 'bench', jsonb_build_object('i', i) FROM generate_series(1, $1::int) AS i`,
      [count],
    );
    await db.query(`VACUUM ANALYZE ${SCHEMA}.notifications`);
    const listener = createListener({ settings, batchSize: options.batchSize });
    const started = performance.now();
    await listener.start();
    await done;
    const ms = performance.now() - started;
    for (;;) {
      const { rows } = await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM ${SCHEMA}.deliveries`,
      );
      if (rows[0].n >= expected) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const ledgerMs = performance.now() - started;
    await listener.stop();
    await worker.close();
    return {
      notifications: count,
      consumers: consumers.length,
      ms: round(ms),
      perSecond: round((count / ms) * 1000),
      deliveriesPerSecond: round((expected / ms) * 1000),
      ledgerMs: round(ledgerMs),
    };
  } finally {
    await dropSchemas(db, SCHEMA).catch(() => undefined);
    await clearPrefix(redis, PREFIX).catch(() => undefined);
    await db.end();
    redis.disconnect();
  }
}

/** Result of {@link benchFanout}. */
export interface FanoutResult {
  notifications: number;
  concurrency: number;
  runs: (BridgeDrain & { ratio: number })[];
}

/** 1, 4 and 16 consumers on one channel; ratio: deliveries/s relative to 1 consumer. */
export async function benchFanout(flags: BenchFlags): Promise<FanoutResult> {
  const notifications = flags.quick ? 2000 : 5000;
  const concurrency = 20;
  const runs: FanoutResult['runs'] = [];
  let base = NaN;
  for (const n of [1, 4, 16]) {
    const consumers = Array.from({ length: n }, (_, i) => ({ id: `fan${i}`, concurrency }));
    const result = await drainBridge(notifications, consumers);
    if (n === 1) base = result.deliveriesPerSecond;
    runs.push({ ...result, ratio: round(result.deliveriesPerSecond / base, 2) });
  }
  return { notifications, concurrency, runs };
}

/** Prints the result of {@link benchFanout}. */
export function printFanout(result: FanoutResult): void {
  printTable(
    `Fan-out: ${result.notifications} notifications on one channel, N consumers (concurrency ${result.concurrency} each), one listener + one worker process; ratio: deliveries/s vs 1 consumer`,
    result.runs.map((r) => ({
      consumers: r.consumers,
      ms: r.ms,
      'notifications/s': r.perSecond,
      'deliveries/s': r.deliveriesPerSecond,
      ratio: r.ratio,
      'ledger done ms': r.ledgerMs,
    })),
  );
}

if (isMain(import.meta.url)) {
  const flags = parseFlags(process.argv.slice(2));
  const result = await benchFanout(flags);
  printFanout(result);
  console.log(JSON.stringify({ fanout: result }, null, 2));
}
