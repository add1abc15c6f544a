/**
 * `listen --recover` verifies the rows of the last 24 hours by default, so a listener start costs
 * the recent rows, not the whole table; `--recover-since` moves the bound and `all` verifies the
 * whole table, as `reconcile --verify` does. Jobs lost from Redis: a recent row's job comes back
 * on a plain `--recover`, an old row's only with `--recover-since all`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWorker, defineConsumer, migrate, notify } from '../../src/index.js';
import { apiSettings, createTestEnv, deleteKeysWithPrefix, type TestEnv } from '../support/env.js';
import { startListening } from '../support/ops.js';

let t: TestEnv;

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});
afterAll(async () => {
  await t.cleanup();
});

async function jobExists(consumer: string, id: string): Promise<boolean> {
  return (await t.redis.exists(`${t.prefix}:${consumer}:n${id}`)) === 1;
}

async function recoverWith(args: string[]): Promise<void> {
  const listen = await startListening(t.env, ['--recover', ...args]);
  await listen.waitForOutput((l) => l.json?.msg === 'recovered: reconcile --verify finished');
  listen.kill('SIGTERM');
  expect((await listen.waitForExit()).code).toBe(0);
}

describe('listen --recover', () => {
  it('verifies recent rows by default and the whole table with --recover-since all', async () => {
    // Registered, never run: the rows stay owed with no outcome in the ledger.
    const worker = createWorker({
      settings: apiSettings(t),
      consumers: [defineConsumer({ id: 'audit', channels: ['ev'], handle: () => undefined })],
    });
    await worker.start();
    await worker.close();
    const old = await notify(t.pool, 'ev', { age: 'old' }, { schema: t.schema });
    const recent = await notify(t.pool, 'ev', { age: 'recent' }, { schema: t.schema });
    await t.pool.query(
      `UPDATE "${t.schema}".notifications SET created_at = now() - interval '3 days' WHERE id = $1`,
      [old],
    );
    // Bridged by a first start, then Redis loses every job.
    await recoverWith([]);
    expect(await jobExists('audit', old)).toBe(true);
    await deleteKeysWithPrefix(t.redis, t.prefix);

    await recoverWith([]);
    expect(await jobExists('audit', recent)).toBe(true);
    expect(await jobExists('audit', old)).toBe(false);

    await recoverWith(['--recover-since', '4d']);
    expect(await jobExists('audit', old)).toBe(true);
    await deleteKeysWithPrefix(t.redis, t.prefix);

    await recoverWith(['--recover-since', 'all']);
    expect(await jobExists('audit', old)).toBe(true);
    expect(await jobExists('audit', recent)).toBe(true);
  }, 60_000);
});
