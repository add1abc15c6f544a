/**
 * Redis memory of large payloads, copied into every job or carried by reference (issue 16).
 *
 * N notifications of S bytes (default 100 of 1 MiB) on one channel with C consumers (default 16)
 * are bridged by `createListener` with no worker running, so every job waits in Redis; then the
 * memory is read twice: the sum of `MEMORY USAGE` over the run's own keys (exact, unaffected by
 * other Redis users) and the change of `INFO memory` `used_memory` (the whole server: noisy when
 * the server is shared). Two runs: `--inline-payload-limit` above S (every job holds a copy: the
 * behaviour before payloads by reference) and the default 64 KiB (every job holds a reference).
 * Memory figures do not depend on the machine being quiet; the bridging time shown does.
 *
 * Run: `npm run bench:payload-memory [-- --notifications N] [-- --size BYTES] [-- --consumers C]`.
 * Everything lives in a schema and a Redis prefix named `pgqbench_payload_*`, removed at the end.
 * The inline run holds about N x S x C bytes in Redis at its peak (1.6 GB by default).
 */
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import type { Redis } from 'ioredis';
import { createListener, createWorker, defineConsumer, migrate } from 'pgq-bridge';
import {
  DATABASE_URL,
  REDIS_URL,
  benchPool,
  benchRedis,
  clearPrefix,
  dropSchemas,
  isMain,
  printTable,
  round,
  sleep,
} from './lib/common.js';

/** Settings of the benchmark. */
export interface PayloadMemoryOptions {
  notifications: number;
  /** Payload size in bytes (JSON text). */
  size: number;
  consumers: number;
}

/** One run's figures. */
export interface PayloadMemoryFigure {
  mode: 'inline (copy per job)' | 'by reference';
  inlinePayloadLimit: number;
  jobs: number;
  /** Sum of MEMORY USAGE over the run's keys, MB. */
  keysMb: number;
  /** Mean MEMORY USAGE of one job hash, bytes. */
  perJobBytes: number;
  /** used_memory after minus before, MB (whole server). */
  usedMemoryDeltaMb: number;
  /** Time to bridge every row, ms. */
  bridgeMs: number;
}

function flag(argv: string[], name: string, fallback: number): number {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = Number(argv[i + 1]);
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`--${name}: a positive integer`);
  return value;
}

async function usedMemory(redis: Redis): Promise<number> {
  const info = await redis.info('memory');
  return Number(/used_memory:(\d+)/.exec(info)?.[1] ?? NaN);
}

/** Sum of MEMORY USAGE of the keys under `prefix:`, and of those that are job hashes. */
async function keyMemory(
  redis: Redis,
  prefix: string,
): Promise<{ total: number; jobs: number; jobBytes: number }> {
  let cursor = '0';
  let total = 0;
  let jobs = 0;
  let jobBytes = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 500);
    cursor = next;
    for (const key of keys) {
      // SAMPLES 0: every field of the hash, not an estimate from a few.
      const bytes = Number(await redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0'));
      total += bytes;
      if (/:n\d+$/.test(key)) {
        jobs++;
        jobBytes += bytes;
      }
    }
  } while (cursor !== '0');
  return { total, jobs, jobBytes };
}

async function run(
  db: pg.Pool,
  redis: Redis,
  options: PayloadMemoryOptions,
  mode: PayloadMemoryFigure['mode'],
  inlinePayloadLimit: number,
): Promise<PayloadMemoryFigure> {
  const tag = randomBytes(4).toString('hex');
  const schema = `pgqbench_payload_${tag}`;
  const prefix = `pgqbench_payload_${tag}`;
  const settings = {
    databaseUrl: DATABASE_URL,
    listenDatabaseUrl: DATABASE_URL,
    redisUrl: REDIS_URL,
    schema,
    prefix,
    inlinePayloadLimit,
  };
  try {
    await migrate({ db, schema });
    // Registered by a worker that stops at once: the jobs then wait in Redis.
    const consumers = Array.from({ length: options.consumers }, (_, i) =>
      defineConsumer({ id: `c${i}`, channels: ['big'], handle: () => undefined }),
    );
    const worker = createWorker({ settings, consumers });
    await worker.start();
    await worker.close();
    // Distinct, barely compressible text (Postgres would shrink a repeated string in TOAST; Redis
    // stores what it gets either way).
    await db.query(
      `SELECT "${schema}".notify('big', jsonb_build_object('i', i, 'blob',
         (SELECT string_agg(md5(i::text || ':' || j::text), '')
            FROM generate_series(1, $2::int / 32) AS j)))
         FROM generate_series(1, $1::int) AS i`,
      [options.notifications, options.size],
    );
    await sleep(500);
    const before = await usedMemory(redis);
    const listener = createListener({ settings, batchSize: 10 });
    const started = performance.now();
    await listener.start();
    for (;;) {
      const { rows } = await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM "${schema}".notifications WHERE bridged_at IS NULL`,
      );
      if (rows[0].n === 0) break;
      await sleep(50);
    }
    const bridgeMs = performance.now() - started;
    await listener.stop();
    const after = await usedMemory(redis);
    const keys = await keyMemory(redis, prefix);
    return {
      mode,
      inlinePayloadLimit,
      jobs: keys.jobs,
      keysMb: round(keys.total / 1024 / 1024, 2),
      perJobBytes: Math.round(keys.jobBytes / Math.max(1, keys.jobs)),
      usedMemoryDeltaMb: round((after - before) / 1024 / 1024, 2),
      bridgeMs: Math.round(bridgeMs),
    };
  } finally {
    await clearPrefix(redis, prefix);
    await dropSchemas(db, schema);
  }
}

/** Runs both modes and returns their figures (inline first). */
export async function payloadMemoryBench(
  options: PayloadMemoryOptions,
): Promise<PayloadMemoryFigure[]> {
  const db = benchPool(4);
  const redis = benchRedis();
  try {
    return [
      await run(db, redis, options, 'inline (copy per job)', Number.MAX_SAFE_INTEGER),
      await run(db, redis, options, 'by reference', 64 * 1024),
    ];
  } finally {
    redis.disconnect();
    await db.end();
  }
}

if (isMain(import.meta.url)) {
  const argv = process.argv.slice(2);
  const options: PayloadMemoryOptions = {
    notifications: flag(argv, 'notifications', 100),
    size: flag(argv, 'size', 1024 * 1024),
    consumers: flag(argv, 'consumers', 16),
  };
  const figures = await payloadMemoryBench(options);
  printTable(
    `Redis memory: ${options.notifications} notifications of ${options.size} bytes, ` +
      `${options.consumers} consumers, every job waiting`,
    figures.map((f) => ({
      mode: f.mode,
      jobs: f.jobs,
      'MEMORY USAGE of the keys (MB)': f.keysMb,
      'per job hash (bytes)': f.perJobBytes,
      'used_memory delta (MB)': f.usedMemoryDeltaMb,
      'bridging (ms)': f.bridgeMs,
    })),
  );
  const [inline, byRef] = figures;
  console.log(
    `by reference holds ${round(inline.keysMb / Math.max(byRef.keysMb, 0.001), 0)}x less ` +
      `(${inline.keysMb} MB -> ${byRef.keysMb} MB of keys)`,
  );
}
