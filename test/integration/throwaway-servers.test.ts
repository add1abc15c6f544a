// Proves the fault-test infrastructure: throwaway servers really stop and restart on the same
// port; Redis loses its data (no persistence), Postgres keeps committed data.
import { afterAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { Redis } from 'ioredis';
import {
  startPostgres,
  startRedis,
  isPortOpen,
  type ThrowawayPostgres,
  type ThrowawayRedis,
} from '../support/servers.js';
import { existsSync } from 'node:fs';

let postgres: ThrowawayPostgres | undefined;
let redis: ThrowawayRedis | undefined;

afterAll(async () => {
  await Promise.allSettled([postgres?.destroy(), redis?.destroy()]);
  if (postgres) expect(existsSync(postgres.baseDir)).toBe(false);
  if (redis) expect(existsSync(redis.baseDir)).toBe(false);
});

async function pgQuery<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

describe('throwaway servers', () => {
  it('Postgres keeps committed data across a fast and an immediate restart', async () => {
    postgres = await startPostgres();
    expect(postgres.url).toBe(`postgres://postgres@127.0.0.1:${postgres.port}/test`);
    expect(existsSync(postgres.dataDir)).toBe(true);
    await pgQuery(postgres.url, 'CREATE TABLE kept (v text); INSERT INTO kept VALUES ($$one$$)');

    await postgres.stop();
    expect(postgres.running).toBe(false);
    expect(await isPortOpen(postgres.port)).toBe(false);
    await expect(pgQuery(postgres.url, 'SELECT 1')).rejects.toThrow();

    await postgres.restart();
    expect(postgres.running).toBe(true);
    await pgQuery(postgres.url, 'INSERT INTO kept VALUES ($$two$$)');

    await postgres.restart('immediate'); // crash-like: recovery on start
    const rows = await pgQuery<{ v: string }>(postgres.url, 'SELECT v FROM kept ORDER BY v');
    expect(rows.map((r) => r.v)).toEqual(['one', 'two']);
  });

  it('Redis loses its data when restarted', async () => {
    redis = await startRedis();
    expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
    const client = new Redis(redis.url, { maxRetriesPerRequest: null });
    client.on('error', () => {});
    try {
      await client.set('pgqt_servers:k', 'v');
      expect(await client.config('GET', 'maxmemory-policy')).toEqual([
        'maxmemory-policy',
        'noeviction',
      ]);

      await redis.stop();
      expect(redis.running).toBe(false);
      expect(await isPortOpen(redis.port)).toBe(false);

      await redis.restart();
      // The same client reconnects to the same port and finds an empty server.
      expect(await client.get('pgqt_servers:k')).toBeNull();
      expect(await client.dbsize()).toBe(0);

      await client.set('pgqt_servers:k', 'v2');
      await redis.restart('kill');
      expect(await client.get('pgqt_servers:k')).toBeNull();
    } finally {
      client.disconnect();
    }
  });
});
