/**
 * Issue 3: the listener is down while 5,000 notifications are stored; `reconcile` turns them into
 * jobs (for every subscribed consumer, flagged as replays) and the workers handle each once.
 * Also: `--dry-run` changes nothing, a second run enqueues nothing, reconcile racing a live
 * listener delivers everything once, and SQL alone answers "did X handle Y, and when?".
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  handledSummary,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  waitForHandled,
  writeConsumers,
} from '../support/delivery.js';
import { sleep } from '../support/wait.js';

const TOTAL = 5000;

let t: TestEnv;
let work: CliHandle;

/** Runs `reconcile <args> --json` and returns its summary. */
async function reconcileJson(args: string[] = []): Promise<Record<string, unknown>> {
  const result = await runCli(['reconcile', ...args, '--json'], { env: t.env, timeoutMs: 60_000 });
  expect(result.code, result.stderr + result.stdout).toBe(0);
  const lines = result.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
}

async function insertNotifications(count: number, channel: string): Promise<void> {
  await t.pool.query(
    `SELECT "${t.schema}".notify($1, jsonb_build_object('i', g)) FROM generate_series(1, $2) g`,
    [channel, count],
  );
}

async function scalar(sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(sql, params);
  return rows[0].n;
}

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  const dir = writeConsumers({
    'consumers.mjs': `${RECORDER}
export default [
  defineConsumer({ id: 'mailer', channels: ['orders'], concurrency: 25,
    async handle(n) { await record('mailer', n); } }),
  defineConsumer({ id: 'audit', channels: ['orders', 'other'], concurrency: 25,
    async handle(n) { await record('audit', n); } }),
];`,
  });
  work = await startWork(t.env, dir, 2);
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

describe('reconcile after the listener was down', () => {
  it('dry run counts and changes nothing', async () => {
    await insertNotifications(TOTAL, 'orders');
    const dry = await reconcileJson(['--dry-run']);
    expect(dry).toMatchObject({
      dryRun: true,
      scanned: TOTAL,
      bridged: TOTAL,
      enqueued: 2 * TOTAL,
      alreadyDone: 0,
      alreadyQueued: 0,
    });
    const unbridged = await scalar(
      `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
    );
    expect(unbridged).toBe(TOTAL);
    // Nothing reached Redis, so nothing can run.
    await sleep(500);
    expect(await scalar(`SELECT count(*)::int AS n FROM "${t.schema}".handled`)).toBe(0);
  });

  it('enqueues every stored row for every subscriber; each is handled once, as a replay', async () => {
    const started = Date.now();
    const summary = await reconcileJson();
    expect(summary).toMatchObject({
      dryRun: false,
      scanned: TOTAL,
      bridged: TOTAL,
      enqueued: 2 * TOTAL,
      alreadyDone: 0,
      alreadyQueued: 0,
      interrupted: false,
    });
    await waitForHandled(t.pool, t.schema, 2 * TOTAL, 90_000);
    console.log(
      `[recovery-reconcile] ${TOTAL} rows reconciled and handled in ${Date.now() - started} ms`,
    );
    await sleep(500);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      audit: { runs: TOTAL, distinct: TOTAL, duplicates: 0 },
      mailer: { runs: TOTAL, distinct: TOTAL, duplicates: 0 },
    });
    expect(
      await scalar(`SELECT count(*)::int AS n FROM "${t.schema}".handled WHERE NOT is_replay`),
    ).toBe(0);
    expect(
      await scalar(
        `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
      ),
    ).toBe(0);
  });

  it('answers "did consumer X handle notification Y, and when?" in SQL', async () => {
    const { rows: some } = await t.pool.query<{ id: string }>(
      `SELECT id::text FROM "${t.schema}".notifications ORDER BY id OFFSET 1234 LIMIT 1`,
    );
    const id = some[0].id;
    // The ledger is written in batches shortly after each job: wait for the last flush.
    await sleep(300);
    const { rows } = await t.pool.query(
      `SELECT status, attempts, last_error, finished_at FROM "${t.schema}".delivery_status
        WHERE consumer_id = 'mailer' AND notification_id = $1`,
      [id],
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ status: 'completed', attempts: 1, last_error: null });
    expect(rows[0].finished_at).toBeInstanceOf(Date);
    const { rows: handledAt } = await t.pool.query<{ at: Date }>(
      `SELECT at FROM "${t.schema}".handled WHERE consumer = 'mailer' AND notification_id = $1`,
      [id],
    );
    expect(rows[0].finished_at.getTime()).toBeGreaterThanOrEqual(handledAt[0].at.getTime() - 1000);
    const { rows: byStatus } = await t.pool.query(
      `SELECT consumer_id, status, count(*)::int AS n FROM "${t.schema}".delivery_status
        GROUP BY 1, 2 ORDER BY 1, 2`,
    );
    expect(byStatus).toEqual([
      { consumer_id: 'audit', status: 'completed', n: TOTAL },
      { consumer_id: 'mailer', status: 'completed', n: TOTAL },
    ]);
    // A new, unbridged row shows as such for both of its consumers.
    await insertNotifications(1, 'other');
    const { rows: fresh } = await t.pool.query(
      `SELECT consumer_id, status FROM "${t.schema}".delivery_status
        WHERE notification_id = (SELECT max(id) FROM "${t.schema}".notifications)`,
    );
    expect(fresh).toEqual([{ consumer_id: 'audit', status: 'unbridged' }]);
  });

  it('a second run (with --verify) enqueues nothing that already ran', async () => {
    await reconcileJson(['--channels', 'other']); // bridges the one 'other' row
    await waitForHandled(t.pool, t.schema, 2 * TOTAL + 1, 30_000);
    await sleep(300);
    const again = await reconcileJson(['--verify']);
    expect(again).toMatchObject({ enqueued: 0, bridged: 0, scanned: TOTAL + 1 });
    expect((again.alreadyDone as number) + (again.alreadyQueued as number)).toBe(2 * TOTAL + 1);
    await sleep(500);
    expect(await scalar(`SELECT count(*)::int AS n FROM "${t.schema}".handled`)).toBe(
      2 * TOTAL + 1,
    );
  });

  it('is safe while a listener runs: every row is still handled once', async () => {
    const before = await scalar(`SELECT count(*)::int AS n FROM "${t.schema}".handled`);
    await insertNotifications(2000, 'orders');
    const listen = await startListen(t.env);
    const [summary] = await Promise.all([
      reconcileJson(['--batch-size', '100']),
      insertNotifications(1000, 'orders'),
    ]);
    expect(summary.enqueued).toBeGreaterThanOrEqual(0);
    await waitForHandled(t.pool, t.schema, before + 2 * 3000, 90_000);
    await sleep(500);
    const summaryAfter = await handledSummary(t.pool, t.schema);
    expect(summaryAfter.mailer.duplicates).toBe(0);
    expect(summaryAfter.audit.duplicates).toBe(0);
    expect(summaryAfter.mailer.distinct).toBe(TOTAL + 3000);
    await stopGracefully(listen);
    await stopGracefully(work);
  });
});
