/**
 * Packed delivery (`batch` + plain `handle`) when `work` dies with SIGKILL in the middle of its
 * packs: the notifications the ledger records as completed are not run again when the stalled
 * packs restart on another worker, and the rest run; a transactional packed consumer commits
 * exactly one effect per notification across repeated kills. Real processes, built CLI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  RECORDER,
  handledSummary,
  migrateWithHandledTable,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  waitForHandled,
  writeConsumers,
} from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let s: string;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  await migrateWithHandledTable(t);
  // No unique constraint on purpose: a second commit of one delivery's effect would show.
  await t.pool.query(
    `CREATE TABLE ${s}.effects (notification_id bigint NOT NULL, pid int NOT NULL)`,
  );
  dir = writeConsumers({
    'packed.mjs': `${RECORDER}
const effects = '"' + process.env.PGQ_SCHEMA + '".effects';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export default [
  defineConsumer({ id: 'packed', channels: ['orders'], batch: { size: 50, maxWaitMs: 20 },
    concurrency: 5, lockDuration: 2000, stalledInterval: 1000,
    async handle(n) { await sleep(40); await record('packed', n); } }),
  defineConsumer({ id: 'packed-tx', channels: ['projected'], batch: { size: 50, maxWaitMs: 20 },
    transactional: true, removeOnComplete: true, concurrency: 6, attempts: 20, backoff: 50,
    lockDuration: 2000, stalledInterval: 1000,
    async handle(n, job, { db }) {
      await db.query('INSERT INTO ' + effects + ' VALUES ($1, $2)', [n.id, process.pid]);
      await sleep(5 + Math.floor(Math.random() * 10));
    } }),
];`,
  });
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

async function scalar(sql: string): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(sql);
  return rows[0].n;
}

async function notifyMany(channel: string, count: number): Promise<void> {
  await t.pool.query(
    `SELECT ${s}.notify($1, jsonb_build_object('i', i)) FROM generate_series(1, $2::int) AS i`,
    [channel, count],
  );
}

describe('packed delivery under kill -9', () => {
  it('a stalled pack half done runs only what the ledger does not record as completed', async () => {
    const listen = await startListen(t.env);
    let work: CliHandle = await startWork(t.env, dir, 2);
    await notifyMany('orders', 200);
    // 200 notifications in 4 packs, 5 at a time for 40 ms each: kill it about a third through.
    await waitForHandled(t.pool, t.schema, 60, 30_000);
    work.killGroup('SIGKILL');
    await work.waitForExit(10_000);
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT notification_id::text AS id FROM ${s}.deliveries
        WHERE consumer_id = 'packed' AND status = 'completed'`,
    );
    const completedAtKill = rows.map((r) => r.id);
    expect(completedAtKill.length).toBeGreaterThanOrEqual(50);
    expect(completedAtKill.length).toBeLessThan(200);
    // Only the packed consumer's jobs are in flight: the stalled packs go to the new worker.
    work = await startWork(t.env, dir, 2);
    await waitFor(
      async () =>
        (await scalar(
          `SELECT count(DISTINCT notification_id)::int AS n FROM ${s}.handled WHERE consumer = 'packed'`,
        )) === 200,
      { timeoutMs: 60_000, message: 'all 200 handled' },
    );
    await sleep(1500);
    const { rows: again } = await t.pool.query<{ id: string }>(
      `SELECT notification_id::text AS id FROM ${s}.handled
        WHERE consumer = 'packed' AND notification_id = ANY($1::bigint[])
        GROUP BY notification_id HAVING count(*) > 1`,
      [completedAtKill],
    );
    expect(again).toEqual([]);
    const summary = (await handledSummary(t.pool, t.schema)).packed;
    expect(summary.distinct).toBe(200);
    // At most the handlers that had returned but whose outcome was not yet written (5 slots).
    expect(summary.duplicates).toBeLessThanOrEqual(5);
    expect(
      await scalar(
        `SELECT count(*)::int AS n FROM ${s}.deliveries WHERE consumer_id = 'packed' AND status = 'completed'`,
      ),
    ).toBe(200);
    await stopGracefully(work);
    await stopGracefully(listen);
  }, 120_000);

  it('a transactional packed consumer commits exactly one effect per notification across kills', async () => {
    const listen = await startListen(t.env);
    let work: CliHandle = await startWork(t.env, dir, 2);
    await notifyMany('projected', 1500);
    for (let round = 0; round < 4; round++) {
      // Each kill lands mid-drain: after the worker committed another 250 effects.
      await waitFor(
        async () =>
          (await scalar(`SELECT count(*)::int AS n FROM ${s}.effects`)) >= 250 * (round + 1),
        { timeoutMs: 30_000, intervalMs: 20, message: `${250 * (round + 1)} effects` },
      );
      work.killGroup('SIGKILL');
      await work.waitForExit(10_000);
      work = startCli(['work', '--consumers-dir', dir], { env: t.env });
    }
    await waitFor(
      async () =>
        (await scalar(
          `SELECT count(*)::int AS n FROM ${s}.deliveries WHERE consumer_id = 'packed-tx' AND status = 'completed'`,
        )) === 1500,
      { timeoutMs: 90_000, intervalMs: 500, message: '1500 completed in the ledger' },
    );
    expect(await scalar(`SELECT count(DISTINCT notification_id)::int AS n FROM ${s}.effects`)).toBe(
      1500,
    );
    expect(await scalar(`SELECT count(*)::int AS n FROM ${s}.effects`)).toBe(1500);
    // The effects come from the killed processes and the last one.
    expect(await scalar(`SELECT count(DISTINCT pid)::int AS n FROM ${s}.effects`)).toBeGreaterThan(
      1,
    );
    const done = await runCli(['status', '--json'], { env: t.env });
    expect(done.code, done.stderr).toBe(0);
    await stopGracefully(work);
    await stopGracefully(listen);
  }, 150_000);
});
