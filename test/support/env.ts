/**
 * Per-test-file isolation for integration tests: a unique Postgres schema and a unique BullMQ
 * prefix on the servers chosen by the global setup. Does not depend on src/: tests install the
 * schema themselves (e.g. `runCli(['migrate'], { env: t.env })`).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';
import { inject } from 'vitest';
import { DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL } from './defaults.js';

export interface TestEnv {
  databaseUrl: string;
  redisUrl: string;
  /** `t_<8 random lowercase alnum>` — not created; `migrate` creates it. */
  schema: string;
  /** `pgqt_<8 random lowercase alnum>` */
  prefix: string;
  /** Environment for CLI processes: DATABASE_URL, REDIS_URL, PGQ_SCHEMA, PGQ_PREFIX, LOG_*. */
  env: NodeJS.ProcessEnv;
  pool: pg.Pool;
  redis: Redis;
  /**
   * Drops the schema (CASCADE), unlinks every Redis key under `<prefix>:`, closes pool and redis.
   * Best effort and idempotent: a step that fails (e.g. a fault test left a server down) is
   * reported with console.warn and does not stop the others; never throws.
   */
  cleanup(): Promise<void>;
}

export interface TestEnvOptions {
  /** Override the Postgres URL (e.g. a throwaway server of a fault test). */
  databaseUrl?: string;
  /** Override the Redis URL. */
  redisUrl?: string;
  /** Extra variables for `env`. */
  extraEnv?: NodeJS.ProcessEnv;
}

const ALNUM = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** `length` random characters of [a-z0-9]. */
export function randomId(length = 8): string {
  const bytes = randomBytes(length);
  let out = '';
  for (const b of bytes) out += ALNUM[b % ALNUM.length];
  return out;
}

function injected(key: 'pgqTestDatabaseUrl' | 'pgqTestRedisUrl'): string | undefined {
  try {
    return inject(key);
  } catch {
    return undefined;
  }
}

/** The Postgres URL chosen by the global setup. */
export function testDatabaseUrl(): string {
  return (
    process.env.PGQ_TEST_DATABASE_URL ||
    injected('pgqTestDatabaseUrl') ||
    process.env.DATABASE_URL ||
    DEFAULT_DATABASE_URL
  );
}

/** The Redis URL chosen by the global setup. */
export function testRedisUrl(): string {
  return (
    process.env.PGQ_TEST_REDIS_URL ||
    injected('pgqTestRedisUrl') ||
    process.env.REDIS_URL ||
    DEFAULT_REDIS_URL
  );
}

/**
 * The settings of the programmatic API (`createListener`, `createWorker`, ...) for this test
 * file's servers, schema and prefix; LISTEN goes to the same database.
 */
export function apiSettings(t: TestEnv): {
  databaseUrl: string;
  listenDatabaseUrl: string;
  redisUrl: string;
  schema: string;
  prefix: string;
} {
  return {
    databaseUrl: t.databaseUrl,
    listenDatabaseUrl: t.databaseUrl,
    redisUrl: t.redisUrl,
    schema: t.schema,
    prefix: t.prefix,
  };
}

/** Variables a CLI child must not inherit from the test runner's own environment. */
const INHERITED_SETTINGS = [
  'DATABASE_URL',
  'LISTEN_DATABASE_URL',
  'REDIS_URL',
  'PGQ_SCHEMA',
  'PGQ_PREFIX',
  'PGQ_INLINE_PAYLOAD_LIMIT',
  'PGQ_CONFIG',
  'LOG_LEVEL',
  'LOG_FORMAT',
];

/** Deletes every key of `redis` that starts with `prefix:` (SCAN + UNLINK). Returns the count. */
export async function deleteKeysWithPrefix(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await redis.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export function createTestEnv(options: TestEnvOptions = {}): TestEnv {
  const databaseUrl = options.databaseUrl ?? testDatabaseUrl();
  const redisUrl = options.redisUrl ?? testRedisUrl();
  const schema = `t_${randomId()}`;
  const prefix = `pgqt_${randomId()}`;

  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of INHERITED_SETTINGS) delete env[name];
  Object.assign(env, {
    DATABASE_URL: databaseUrl,
    REDIS_URL: redisUrl,
    PGQ_SCHEMA: schema,
    PGQ_PREFIX: prefix,
    LOG_FORMAT: 'json',
    LOG_LEVEL: 'info',
    ...options.extraEnv,
  });

  const pool = new pg.Pool({ connectionString: databaseUrl, max: 5 });
  // An idle client's error (e.g. a fault test restarting Postgres) must not crash the worker.
  pool.on('error', () => {});
  const redis = new Redis(redisUrl, { lazyConnect: false });
  redis.on('error', () => {});

  let cleaned: Promise<void> | undefined;
  const cleanup = (): Promise<void> => {
    cleaned ??= (async () => {
      const steps: Array<[string, () => Promise<unknown>]> = [
        ['drop schema', () => pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)],
        ['delete redis keys', () => deleteKeysWithPrefix(redis, prefix)],
      ];
      for (const [what, step] of steps) {
        try {
          await withTimeout(step(), 10_000, what);
        } catch (error) {
          console.warn(
            `[test env ${schema}/${prefix}] cleanup: ${what} failed: ${
              error instanceof Error ? error.message : String(error)
            }`,
          );
        }
      }
      await withTimeout(pool.end(), 5_000, 'pool.end').catch(() => {});
      redis.disconnect();
    })();
    return cleaned;
  };

  return { databaseUrl, redisUrl, schema, prefix, env, pool, redis, cleanup };
}
