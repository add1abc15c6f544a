/**
 * Vitest global setup: decides which Postgres and Redis the tests use.
 *
 * 1. DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) and REDIS_URL (default
 *    redis://127.0.0.1:6379) are probed with a ~2 s timeout. A missing `test` database on a
 *    reachable server is created.
 * 2. A server that does not answer is replaced by a throwaway one (test/support/servers.ts).
 *    PGQ_TEST_THROWAWAY=1 skips the probe and always uses throwaway servers; =0 never starts one.
 * 3. If that fails too, the run stops at once with what is unreachable and how to fix it.
 *
 * The chosen URLs reach test files as process.env.PGQ_TEST_DATABASE_URL / PGQ_TEST_REDIS_URL
 * and as `inject('pgqTestDatabaseUrl')` / `inject('pgqTestRedisUrl')`.
 */
import pg from 'pg';
import { Redis } from 'ioredis';
import type { TestProject } from 'vitest/node';
import { startPostgres, startRedis } from '../support/servers.js';
import { redactUrl } from '../support/redact.js';
import { DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL } from '../support/defaults.js';

declare module 'vitest' {
  export interface ProvidedContext {
    pgqTestDatabaseUrl: string;
    pgqTestRedisUrl: string;
  }
}

const PROBE_TIMEOUT_MS = 2000;

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function pgSelect1(url: string): Promise<void> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: PROBE_TIMEOUT_MS,
    query_timeout: PROBE_TIMEOUT_MS,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
  } finally {
    await client.end().catch(() => {});
  }
}

/** Probes Postgres; creates the database if the server answers but the database is missing. */
export async function probePostgres(url: string): Promise<void> {
  try {
    await pgSelect1(url);
  } catch (error) {
    if ((error as { code?: string }).code !== '3D000') throw error; // invalid_catalog_name
    const target = new URL(url);
    const database = decodeURIComponent(target.pathname.slice(1));
    const admin = new URL(url);
    admin.pathname = '/postgres';
    const client = new pg.Client({
      connectionString: admin.toString(),
      connectionTimeoutMillis: PROBE_TIMEOUT_MS,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
    } catch (createError) {
      if ((createError as { code?: string }).code !== '42P04') throw createError; // duplicate_database
    } finally {
      await client.end().catch(() => {});
    }
    await pgSelect1(url);
  }
}

export async function probeRedis(url: string): Promise<void> {
  const redis = new Redis(url, {
    lazyConnect: true,
    connectTimeout: PROBE_TIMEOUT_MS,
    commandTimeout: PROBE_TIMEOUT_MS,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  let lastError: Error | undefined;
  redis.on('error', (error: Error) => (lastError = error));
  try {
    await redis.connect().catch((error: Error) => {
      throw lastError ?? error;
    });
    const answer = await redis.ping();
    if (answer !== 'PONG') throw new Error(`unexpected answer to PING: ${answer}`);
    try {
      const [, policy] = (await redis.config('GET', 'maxmemory-policy')) as string[];
      if (policy !== undefined && policy !== 'noeviction') {
        console.warn(
          `[pgq-bridge tests] Redis at ${redactUrl(url)} has maxmemory-policy=${policy}; ` +
            'BullMQ needs noeviction',
        );
      }
    } catch {
      // CONFIG may be disabled (managed Redis); not our business here
    }
  } finally {
    redis.disconnect();
  }
}

interface Choice {
  url: string;
  stop?: () => Promise<void>;
  note: string;
}

async function choose(
  kind: 'Postgres' | 'Redis',
  envName: 'DATABASE_URL' | 'REDIS_URL',
  configured: string,
  probe: (url: string) => Promise<void>,
  startThrowaway: () => Promise<{ url: string; destroy(): Promise<void> }>,
  throwaway: 'auto' | 'always' | 'never',
): Promise<Choice | { error: string }> {
  let probeError = 'not probed (PGQ_TEST_THROWAWAY=1)';
  if (throwaway !== 'always') {
    try {
      await probe(configured);
      return { url: configured, note: `${kind}: ${redactUrl(configured)} (${envName})` };
    } catch (error) {
      probeError = redactUrl(message(error) || String((error as { code?: string }).code ?? error));
    }
  }
  if (throwaway === 'never') {
    return {
      error:
        `${kind} is unreachable at ${redactUrl(configured)} (${envName}): ${probeError}\n` +
        `  (no throwaway ${kind} started: PGQ_TEST_THROWAWAY=0)`,
    };
  }
  try {
    const server = await startThrowaway();
    return {
      url: server.url,
      stop: () => server.destroy(),
      note:
        `${kind}: throwaway server at ${server.url}` +
        (throwaway === 'always' ? '' : ` (${redactUrl(configured)} did not answer: ${probeError})`),
    };
  } catch (error) {
    return {
      error:
        `${kind} is unreachable at ${redactUrl(configured)} (${envName}): ${probeError}\n` +
        `  and a throwaway ${kind} could not be started: ${redactUrl(message(error).split('\n')[0])}`,
    };
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const flag = process.env.PGQ_TEST_THROWAWAY ?? '';
  const throwaway = /^(1|true|yes)$/i.test(flag)
    ? 'always'
    : /^(0|false|no)$/i.test(flag)
      ? 'never'
      : 'auto';
  const databaseUrl = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;
  const redisUrl = process.env.REDIS_URL || DEFAULT_REDIS_URL;

  const [pgChoice, redisChoice] = await Promise.all([
    choose('Postgres', 'DATABASE_URL', databaseUrl, probePostgres, startPostgres, throwaway),
    choose('Redis', 'REDIS_URL', redisUrl, probeRedis, startRedis, throwaway),
  ]);

  const stops = [pgChoice, redisChoice].flatMap((c) => ('stop' in c && c.stop ? [c.stop] : []));
  const teardown = async () => {
    await Promise.allSettled(stops.map((stop) => stop()));
  };

  const errors = [pgChoice, redisChoice].flatMap((c) => ('error' in c ? [c.error] : []));
  if (errors.length > 0) {
    await teardown();
    throw new Error(
      `pgq-bridge tests need PostgreSQL and Redis.\n${errors.join('\n')}\n` +
        'To fix it, do one of:\n' +
        '  - `docker compose up -d postgres redis` (the repo docker-compose.yml), or\n' +
        '  - install and start PostgreSQL and Redis (`apt-get install postgresql redis-server`), or\n' +
        '  - set DATABASE_URL / REDIS_URL to servers that are running ' +
        '(e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379).',
    );
  }

  const chosenPg = pgChoice as Choice;
  const chosenRedis = redisChoice as Choice;
  process.env.PGQ_TEST_DATABASE_URL = chosenPg.url;
  process.env.PGQ_TEST_REDIS_URL = chosenRedis.url;
  project.provide('pgqTestDatabaseUrl', chosenPg.url);
  project.provide('pgqTestRedisUrl', chosenRedis.url);
  if (chosenPg.stop || chosenRedis.stop || process.env.PGQ_TEST_VERBOSE) {
    console.log(`[pgq-bridge tests] ${chosenPg.note}\n[pgq-bridge tests] ${chosenRedis.note}`);
  }

  return teardown;
}
