/**
 * Issue 5, startup checks: a Redis that may evict jobs is reported loudly (and refused with
 * --strict), a schema older than the code asks for `migrate`, and a LISTEN connection through a
 * transaction-mode pooler is caught by the self-test NOTIFY and refused.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { removeOpsConsumers, startPoolerLikeProxy, writeOpsConsumers } from '../support/ops.js';
import { startRedis, type ThrowawayRedis } from '../support/servers.js';

let t: TestEnv;
let lru: ThrowawayRedis;
beforeAll(async () => {
  t = createTestEnv();
  lru = await startRedis({ args: ['--maxmemory-policy', 'allkeys-lru'] });
  const result = await runCli(['migrate'], { env: t.env });
  expect(result.code, result.stderr).toBe(0);
});
afterAll(async () => {
  await t.cleanup();
  await lru?.destroy();
  removeOpsConsumers();
});

describe('startup checks', () => {
  it('reports a Redis maxmemory-policy other than noeviction, and refuses it with --strict', async () => {
    const env = { ...t.env, REDIS_URL: lru.url };
    const listen = startCli(['listen'], { env });
    await listen.waitForOutput(/"msg":"listening"/);
    await listen.waitForOutput(/LISTEN connection ready/);
    const [warning] = listen.logs().filter((l) => l.check === 'redis-eviction');
    expect(warning).toBeDefined();
    expect(warning.level).toBe(50);
    expect(warning.maxmemoryPolicy).toBe('allkeys-lru');
    expect(String(warning.msg)).toMatch(/maxmemory-policy is "allkeys-lru".*noeviction/);
    listen.kill('SIGTERM');
    const exit = await listen.waitForExit();
    expect(exit.code, JSON.stringify(exit) + listen.stdout() + listen.stderr()).toBe(0);

    const strict = await runCli(['listen', '--strict'], { env });
    expect(strict.code).toBe(1);
    expect(strict.stderr).toMatch(/maxmemory-policy is "allkeys-lru".*refused because of --strict/);

    const dir = writeOpsConsumers({
      'c.mjs': `export default { id: 'strict-c', channels: ['x'], handle() {} };`,
    });
    const work = await runCli(['work', '--strict', '--consumers-dir', dir], { env });
    expect(work.code).toBe(1);
    expect(work.stderr).toMatch(/allkeys-lru/);
  });

  it('asks to run migrate when the schema is older than the code', async () => {
    const other = createTestEnv();
    try {
      expect((await runCli(['migrate'], { env: other.env })).code).toBe(0);
      await other.pool.query(
        `DELETE FROM "${other.schema}".schema_migrations
          WHERE version = (SELECT max(version) FROM "${other.schema}".schema_migrations)`,
      );
      const { rows } = await other.pool.query<{ v: number }>(
        `SELECT max(version) AS v FROM "${other.schema}".schema_migrations`,
      );
      const result = await runCli(['listen'], { env: other.env });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(
        new RegExp(
          `is at version ${rows[0].v}, this pgq-bridge needs \\d+: run pgq-bridge migrate`,
        ),
      );
      const status = await runCli(['status'], { env: other.env });
      expect(status.code).toBe(1);
      expect(status.stderr).toMatch(/run pgq-bridge migrate/);
    } finally {
      await other.cleanup();
    }
  });

  it('refuses a LISTEN connection that does not receive NOTIFYs (transaction pooler)', async () => {
    const direct = new URL(t.databaseUrl);
    const proxy = await startPoolerLikeProxy({
      host: direct.hostname,
      port: Number(direct.port || 5432),
    });
    try {
      const pooled = new URL(t.databaseUrl);
      pooled.hostname = '127.0.0.1';
      pooled.port = String(proxy.port);
      const result = await runCli(['listen'], {
        env: { ...t.env, LISTEN_DATABASE_URL: pooled.toString() },
      });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/transaction-mode pooler/);
      expect(result.stderr).toMatch(/LISTEN_DATABASE_URL/);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(proxy.dropped).toBeGreaterThan(0);
    } finally {
      await proxy.close();
    }
  });
});
