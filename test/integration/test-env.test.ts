import { afterAll, describe, expect, inject, it } from 'vitest';
import { createTestEnv, type TestEnv } from '../support/env.js';

const envs: TestEnv[] = [];
afterAll(async () => {
  await Promise.all(envs.map((e) => e.cleanup()));
});

describe('createTestEnv', () => {
  it('uses the servers chosen by the global setup', () => {
    expect(process.env.PGQ_TEST_DATABASE_URL).toBe(inject('pgqTestDatabaseUrl'));
    expect(process.env.PGQ_TEST_REDIS_URL).toBe(inject('pgqTestRedisUrl'));
    const t = createTestEnv();
    envs.push(t);
    expect(t.databaseUrl).toBe(inject('pgqTestDatabaseUrl'));
    expect(t.redisUrl).toBe(inject('pgqTestRedisUrl'));
    expect(t.schema).toMatch(/^t_[a-z0-9]{8}$/);
    expect(t.prefix).toMatch(/^pgqt_[a-z0-9]{8}$/);
    expect(t.env).toMatchObject({
      DATABASE_URL: t.databaseUrl,
      REDIS_URL: t.redisUrl,
      PGQ_SCHEMA: t.schema,
      PGQ_PREFIX: t.prefix,
      LOG_FORMAT: 'json',
      LOG_LEVEL: 'info',
    });
  });

  it('cleanup drops the schema and only its own Redis keys, and is idempotent', async () => {
    const t = createTestEnv();
    const other = createTestEnv();
    envs.push(other);
    expect(t.schema).not.toBe(other.schema);

    await t.pool.query(`CREATE SCHEMA "${t.schema}"; CREATE TABLE "${t.schema}".x (id int)`);
    for (let i = 0; i < 2500; i++) await t.redis.set(`${t.prefix}:q:${i}`, '1');
    await other.redis.set(`${other.prefix}:q:keep`, '1');
    await t.redis.set(`${t.prefix}x:not-mine`, '1'); // same start, but not under "<prefix>:"

    await t.cleanup();
    await t.cleanup();

    const { rows } = await other.pool.query(
      'SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = $1',
      [t.schema],
    );
    expect(rows[0].n).toBe(0);
    expect(await other.redis.keys(`${t.prefix}:*`)).toEqual([]);
    expect(await other.redis.get(`${other.prefix}:q:keep`)).toBe('1');
    expect(await other.redis.get(`${t.prefix}x:not-mine`)).toBe('1');
    await other.redis.del(`${t.prefix}x:not-mine`);
  });
});
