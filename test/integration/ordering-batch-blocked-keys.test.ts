/**
 * A dead letter blocks its key in an ordered batch consumer, with real processes (issue 13):
 * the built CLI's `listen` and `work`, `status --json` naming the blocked keys, and the two ways
 * out: `pgq-bridge reconcile --failed` (a fresh try of the head; the rest of the key follows in
 * order) and `pgq-bridge consumers skip` (the head given up; the key moves on). Both promote
 * the next notification, so it starts in seconds, not after its 60 s wait behind a dead letter.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { removeConsumerDirs, startListen, startWork, writeConsumers } from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let s: string;
const handles: CliHandle[] = [];

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  const migrated = await runCli(['migrate'], { env: t.env });
  expect(migrated.code, migrated.stderr).toBe(0);
  await t.pool.query(
    `CREATE TABLE ${s}.seen (seq bigserial PRIMARY KEY, notification_id bigint NOT NULL, key text)`,
  );
  const dir = writeConsumers({
    'blocking.mjs': `
import pg from 'pg';
import { defineConsumer, PermanentError } from 'pgq-bridge';
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
pool.on('error', () => {});
const s = '"' + process.env.PGQ_SCHEMA + '"';
export default defineConsumer({
  id: 'blocking', channels: ['b'], ordered: true, attempts: 2, backoff: { type: 'fixed', delay: 50 },
  batch: { size: 10, maxWaitMs: 20 },
  async handleBatch(ns) {
    // 'once' fails until replayed by reconcile --failed; 'always' fails every time.
    for (const n of ns) {
      if (n.payload.poison === 'always' || (n.payload.poison === 'once' && !n.isReplay)) {
        throw new PermanentError('poison ' + n.id);
      }
    }
    await pool.query('INSERT INTO ' + s + '.seen (notification_id, key) ' +
      'SELECT * FROM unnest($1::bigint[], $2::text[])', [ns.map((n) => n.id), ns.map((n) => n.key)]);
  },
});`,
  });
  handles.push(await startListen(t.env));
  handles.push(await startWork(t.env, dir, 1, ['--worker']));
});

afterAll(async () => {
  for (const h of handles) if (!h.exited) h.killGroup('SIGKILL');
  await t.cleanup();
  removeConsumerDirs();
});

async function seen(key: string): Promise<string[]> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT notification_id::text AS id FROM ${s}.seen WHERE key = $1 ORDER BY seq`,
    [key],
  );
  return rows.map((r) => r.id);
}

async function blocked(): Promise<{ count: number; oldest: { key: string } | null } | undefined> {
  const result = await runCli(['status', '--json'], { env: t.env });
  const report = JSON.parse(result.stdout) as {
    consumers: { id: string; blockedKeys?: { count: number; oldest: { key: string } | null } }[];
  };
  return report.consumers.find((c) => c.id === 'blocking')?.blockedKeys;
}

it('blocks a key behind a dead letter in a batch; reconcile --failed and consumers skip release it', async () => {
  // One statement: the listener packs them together.
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT ${s}.notify('b', p::jsonb, k)::text AS id
       FROM (VALUES (1, '{}', 'A'), (2, '{"poison": "once"}', 'A'), (3, '{}', 'A'),
                    (4, '{}', 'B'), (5, '{}', 'R'), (6, '{"poison": "always"}', 'R'),
                    (7, '{}', 'A'), (8, '{}', 'R'), (9, '{}', 'B'), (10, '{}', 'R')) v(o, p, k)
      ORDER BY o`,
  );
  const [a1, a2, a3, b1, r1, r2, a4, r3, b2, r4] = rows.map((r) => r.id);
  await waitFor(async () => (await blocked())?.count === 2, {
    timeoutMs: 30_000,
    message: 'A and R blocked',
  });
  await waitFor(async () => (await seen('B')).length === 2, {
    timeoutMs: 20_000,
    message: 'B handled',
  });
  await sleep(1500);
  expect(await seen('A')).toEqual([a1]);
  expect(await seen('R')).toEqual([r1]);
  expect(await seen('B')).toEqual([b1, b2]);
  expect((await blocked())?.oldest?.key).toBe('A');

  const replay = await runCli(['reconcile', '--failed', '--consumers', 'blocking'], { env: t.env });
  expect(replay.code, replay.stderr).toBe(0);
  let released = performance.now();
  await waitFor(async () => (await seen('A')).length === 4, {
    timeoutMs: 20_000,
    message: 'A2 replayed, then A3 and A4',
  });
  expect(performance.now() - released).toBeLessThan(5000);
  expect(await seen('A')).toEqual([a1, a2, a3, a4]);
  // R2 fails again on its replay: R stays blocked.
  await waitFor(async () => (await blocked())?.count === 1, {
    timeoutMs: 20_000,
    message: 'only R blocked',
  });
  expect((await blocked())?.oldest?.key).toBe('R');
  expect(await seen('R')).toEqual([r1]);

  const skip = await runCli(['consumers', 'skip', 'blocking', r2], { env: t.env });
  expect(skip.code, skip.stderr).toBe(0);
  released = performance.now();
  await waitFor(async () => (await seen('R')).length === 3, {
    timeoutMs: 20_000,
    message: 'R3 and R4 after the skip',
  });
  expect(performance.now() - released).toBeLessThan(5000);
  expect(await seen('R')).toEqual([r1, r3, r4]);
  expect((await blocked())?.count).toBe(0);
});
