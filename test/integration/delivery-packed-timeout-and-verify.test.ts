/**
 * Packed delivery (`batch` + plain `handle`), real `listen`/`work`/`reconcile` processes:
 *
 * - A handler that outlives its `timeout` inside a pack: its `ctx.signal` aborts, the attempt
 *   fails, the notification leaves the pack and is retried, and its retry starts only after the
 *   first run settled: two runs of one notification never overlap.
 * - `reconcile --verify` in a loop beside a live packed consumer (about 200 notifications a
 *   second, packs of up to 50) re-enqueues nothing still inside a pack: every notification is
 *   handled once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
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
  writeWhileVerifying,
} from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let s: string;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  await migrateWithHandledTable(t);
  await t.pool.query(
    `CREATE TABLE ${s}.runs (
       notification_id bigint NOT NULL, attempt int NOT NULL, started_at timestamptz NOT NULL,
       ended_at timestamptz NOT NULL, aborted boolean NOT NULL, reason text)`,
  );
  dir = writeConsumers({
    'packed.mjs': `${RECORDER}
const runsTable = '"' + process.env.PGQ_SCHEMA + '".runs';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export default [
  // Concurrency 4, so overlapping runs would have the slots to overlap in.
  defineConsumer({ id: 'slow-packed', channels: ['slow'], batch: { size: 10, maxWaitMs: 0 },
    timeout: 150, attempts: 2, backoff: 10, concurrency: 4,
    async handle(n, job, ctx) {
      const started = new Date();
      await sleep(600); // ignores the signal on purpose: the retry must wait for it anyway
      await pool.query('INSERT INTO ' + runsTable + ' VALUES ($1, $2, $3, $4, $5, $6)', [
        n.id, n.attempt, started, new Date(), ctx.signal.aborted,
        ctx.signal.aborted ? String(ctx.signal.reason?.code) : null,
      ]);
    } }),
  defineConsumer({ id: 'packed', channels: ['orders'], batch: { size: 50, maxWaitMs: 500 },
    concurrency: 10,
    async handle(n) { await sleep(20); await record('packed', n); } }),
];`,
  });
});

afterAll(async () => {
  removeConsumerDirs();
  await t?.cleanup();
});

interface Run {
  notification_id: string;
  attempt: number;
  started_at: Date;
  ended_at: Date;
  aborted: boolean;
  reason: string | null;
}

describe('packed delivery: timeouts and reconcile --verify', () => {
  it('aborts a timed-out handler, retries it alone, and never overlaps the two runs', async () => {
    const work = await startWork(t.env, dir, 2);
    const listen = await startListen(t.env);
    await t.pool.query(
      `SELECT ${s}.notify('slow', jsonb_build_object('i', g)) FROM generate_series(1, 6) g`,
    );
    await waitFor(
      async () => {
        const { rows } = await t.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${s}.deliveries
            WHERE consumer_id = 'slow-packed' AND status = 'failed' AND last_error LIKE '%timed out%'`,
        );
        return rows[0].n === 6;
      },
      { timeoutMs: 40_000, message: 'every notification failed for good by its timeout' },
    );
    const { rows: runs } = await t.pool.query<Run>(
      `SELECT notification_id::text, attempt, started_at, ended_at, aborted, reason
         FROM ${s}.runs ORDER BY notification_id, started_at`,
    );
    const byId = new Map<string, Run[]>();
    for (const r of runs) byId.set(r.notification_id, [...(byId.get(r.notification_id) ?? []), r]);
    expect(byId.size).toBe(6);
    for (const [id, list] of byId) {
      expect(
        list.map((r) => r.attempt),
        id,
      ).toEqual([1, 2]);
      // The retry (its own job n<id>) started after the first run had settled.
      expect(list[1].started_at.getTime(), id).toBeGreaterThanOrEqual(list[0].ended_at.getTime());
      for (const r of list) {
        expect(r.aborted && r.reason === 'PGQ_TIMEOUT', id).toBe(true);
        expect(r.ended_at.getTime() - r.started_at.getTime()).toBeGreaterThanOrEqual(590);
      }
    }
    await stopGracefully(listen);
    await stopGracefully(work);
  }, 90_000);

  it('reconcile --verify in a loop beside it re-enqueues nothing in flight', async () => {
    const work = await startWork(t.env, dir, 2);
    const listen = await startListen(t.env, ['--poll-interval', '0.2']);
    const { sent, verifies } = await writeWhileVerifying(t, 'orders', 200, 12);
    expect(verifies).toBeGreaterThanOrEqual(2);
    await waitForHandled(t.pool, t.schema, sent, 90_000);
    const last = await runCli(['reconcile', '--verify', '--json'], { env: t.env });
    expect(JSON.parse(last.stdout.trim().split('\n').pop()!)).toMatchObject({ enqueued: 0 });
    await sleep(3000);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      packed: { runs: sent, distinct: sent, duplicates: 0 },
    });
    await stopGracefully(listen);
    await stopGracefully(work);
  }, 180_000);
});
