/**
 * Issue 3: consumers added after 1,000 notifications were stored and bridged. `startFrom:
 * 'beginning'` gets every stored notification of its channels (played back by the worker that
 * registered it, as replays), `'now'` only newer ones; a consumer whose channels change gets the
 * new channel's notifications from the change on. Rows still unbridged when a consumer registers
 * reach it once, through the bridge. Afterwards reconcile has nothing left to play back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  hasMsg,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  waitForHandled,
  writeConsumers,
} from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;

async function scalar(sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(sql, params);
  return rows[0].n;
}

async function insert(channel: string, count: number): Promise<void> {
  await t.pool.query(
    `SELECT "${t.schema}".notify($1, jsonb_build_object('i', g)) FROM generate_series(1, $2) g`,
    [channel, count],
  );
}

/** Per consumer and channel: runs, distinct notifications, replays. */
async function handledBy(): Promise<
  Record<string, { runs: number; distinct: number; replays: number }>
> {
  const { rows } = await t.pool.query<{
    key: string;
    runs: number;
    distinct: number;
    replays: number;
  }>(
    `SELECT h.consumer || '/' || n.channel AS key, count(*)::int AS runs,
            count(DISTINCT h.notification_id)::int AS distinct,
            count(*) FILTER (WHERE h.is_replay)::int AS replays
       FROM "${t.schema}".handled h JOIN "${t.schema}".notifications n ON n.id = h.notification_id
      GROUP BY 1 ORDER BY 1`,
  );
  return Object.fromEntries(rows.map(({ key, ...rest }) => [key, rest]));
}

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

describe('playback for new consumers', () => {
  it("'beginning' gets every stored notification, 'now' only newer ones", async () => {
    const first = writeConsumers({
      'consumers.mjs': `${RECORDER}
export default defineConsumer({ id: 'early', channels: ['orders'], concurrency: 20,
  async handle(n) { await record('early', n); } });`,
    });
    let work = await startWork(t.env, first, 1);
    let listen = await startListen(t.env);
    await insert('orders', 1000);
    await insert('invoices', 50); // nobody subscribes yet
    await waitForHandled(t.pool, t.schema, 1000, 60_000);
    await stopGracefully(listen);
    await stopGracefully(work);
    // Stored while the listener is down: still unbridged when the new consumers register.
    await insert('orders', 20);

    const second = writeConsumers({
      'consumers.mjs': `${RECORDER}
export default [
  defineConsumer({ id: 'from-start', channels: ['orders'], startFrom: 'beginning', concurrency: 20,
    async handle(n) { await record('from-start', n); } }),
  defineConsumer({ id: 'from-now', channels: ['orders'], startFrom: 'now', concurrency: 20,
    async handle(n) { await record('from-now', n); } }),
  defineConsumer({ id: 'early', channels: ['orders', 'invoices'], concurrency: 20,
    async handle(n) { await record('early', n); } }),
];`,
    });
    work = await startWork(t.env, second, 3);
    const played = await work.waitForOutput(
      hasMsg('played stored notifications to new consumers'),
      30_000,
    );
    expect(played.json).toMatchObject({ enqueued: 1000, alreadyDone: 0 });
    expect(played.json?.consumers).toEqual(['from-start', 'from-now', 'early']);

    listen = await startListen(t.env);
    await insert('orders', 10);
    await insert('invoices', 5);
    // early: 1000 + 20 + 10 orders, 5 invoices; from-start: 1000 + 20 + 10; from-now: 10.
    await waitForHandled(t.pool, t.schema, 1035 + 1030 + 10, 60_000);
    await sleep(800);
    expect(await handledBy()).toEqual({
      'early/invoices': { runs: 5, distinct: 5, replays: 0 },
      'early/orders': { runs: 1030, distinct: 1030, replays: 0 },
      'from-now/orders': { runs: 10, distinct: 10, replays: 0 },
      'from-start/orders': { runs: 1030, distinct: 1030, replays: 1000 },
    });

    // Playback is finished and recorded: reconcile has nothing to add and scans nothing.
    expect(
      await scalar(
        `SELECT count(*)::int AS n FROM "${t.schema}".subscriptions
          WHERE greatest(after_id, playback_cursor) < playback_through_id`,
      ),
    ).toBe(0);
    const result = await runCli(['reconcile', '--json'], { env: t.env });
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout.trim().split('\n').pop()!)).toMatchObject({
      scanned: 0,
      enqueued: 0,
    });
    await stopGracefully(listen);
    await stopGracefully(work);
  });

  it('reconcile finishes a playback the worker did not get to', async () => {
    // A 'beginning' consumer whose worker stopped at once: its playback range is still open.
    const dir = writeConsumers({
      'consumers.mjs': `${RECORDER}
export default defineConsumer({ id: 'late', channels: ['invoices'], startFrom: 'beginning',
  async handle(n) { await record('late', n); } });`,
    });
    await t.pool.query(
      `INSERT INTO "${t.schema}".consumers (id, start_from) VALUES ('late', 'beginning')`,
    );
    await t.pool.query(
      `INSERT INTO "${t.schema}".subscriptions (consumer_id, channel, after_id, playback_through_id)
       SELECT 'late', 'invoices', 0, max(id) FROM "${t.schema}".notifications`,
    );
    const dry = await runCli(['reconcile', '--json', '--dry-run'], { env: t.env });
    expect(JSON.parse(dry.stdout.trim().split('\n').pop()!)).toMatchObject({ enqueued: 55 });
    const result = await runCli(['reconcile', '--json'], { env: t.env });
    expect(JSON.parse(result.stdout.trim().split('\n').pop()!)).toMatchObject({ enqueued: 55 });
    const work = await startWork(t.env, dir, 1);
    await waitFor(
      async () =>
        (await scalar(
          `SELECT count(*)::int AS n FROM "${t.schema}".handled WHERE consumer = 'late'`,
        )) === 55,
      { timeoutMs: 30_000, message: "55 invoices handled by 'late'" },
    );
    await stopGracefully(work);
  });
});
