/**
 * Issue 2: 10,000 notifications from 8 concurrent connections, one per transaction, on two
 * channels; two consumers (one on both channels, one on one channel), each run by two competing
 * `work` processes, and one `listen` process. Every (consumer, notification) is handled exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  handledSummary,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  sendNotifications,
  startListen,
  startWork,
  stopGracefully,
  waitForHandled,
  writeConsumers,
} from '../support/delivery.js';
import { sleep } from '../support/wait.js';

const TOTAL = 10_000;

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

describe('fan-out under concurrent writers', () => {
  it('handles every (consumer, notification) exactly once', async () => {
    const dir = writeConsumers({
      'consumers.mjs': `${RECORDER}
export default [
  defineConsumer({ id: 'both', channels: ['alpha', 'beta'], concurrency: 20,
    async handle(n) { await record('both', n); } }),
  defineConsumer({ id: 'alpha-only', channels: ['alpha'], concurrency: 20,
    async handle(n) { await record('alpha-only', n); } }),
];`,
    });
    // Register the consumers before anything is sent (startFrom 'now').
    const workers = [await startWork(t.env, dir, 2), await startWork(t.env, dir, 2)];
    const listen = await startListen(t.env);

    const started = Date.now();
    const ids = await sendNotifications(t.databaseUrl, t.schema, TOTAL, 8, (i) =>
      i % 2 === 0 ? 'alpha' : 'beta',
    );
    const alpha = ids.get('alpha')!;
    const beta = ids.get('beta')!;
    expect(alpha.length + beta.length).toBe(TOTAL);

    await waitForHandled(t.pool, t.schema, TOTAL + alpha.length, 120_000);
    const elapsed = Date.now() - started;
    // Anything handled twice would typically show up shortly after; give it a moment.
    await sleep(1000);

    const summary = await handledSummary(t.pool, t.schema);
    expect(summary).toEqual({
      both: { runs: TOTAL, distinct: TOTAL, duplicates: 0 },
      'alpha-only': { runs: alpha.length, distinct: alpha.length, duplicates: 0 },
    });
    // The right notifications, not just the right numbers.
    const { rows: wrong } = await t.pool.query(
      `SELECT h.consumer, h.notification_id FROM "${t.schema}".handled h
         JOIN "${t.schema}".notifications n ON n.id = h.notification_id
        WHERE h.consumer = 'alpha-only' AND n.channel <> 'alpha'`,
    );
    expect(wrong).toEqual([]);
    const { rows: missing } = await t.pool.query(
      `SELECT n.id FROM "${t.schema}".notifications n
        WHERE NOT EXISTS (SELECT 1 FROM "${t.schema}".handled h
                           WHERE h.consumer = 'both' AND h.notification_id = n.id)`,
    );
    expect(missing).toEqual([]);
    const { rows: unbridged } = await t.pool.query(
      `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
    );
    expect(unbridged[0].n).toBe(0);

    // The ledger agrees: one completed delivery per (consumer, notification).
    const { rows: ledger } = await t.pool.query(
      `SELECT consumer_id, status, count(*)::int AS n FROM "${t.schema}".deliveries
        GROUP BY 1, 2 ORDER BY 1, 2`,
    );
    expect(ledger).toEqual([
      { consumer_id: 'alpha-only', status: 'completed', n: alpha.length },
      { consumer_id: 'both', status: 'completed', n: TOTAL },
    ]);
    // Both work processes took part (competing workers share each consumer's queue).
    const { rows: perPid } = await t.pool.query(
      `SELECT count(DISTINCT pid)::int AS n FROM "${t.schema}".handled`,
    );
    expect(perPid[0].n).toBe(2);

    console.log(
      `[core-fanout] ${TOTAL} notifications, ${TOTAL + alpha.length} deliveries in ${elapsed} ms`,
    );
    await stopGracefully(listen);
    await Promise.all(workers.map((w) => stopGracefully(w)));
  }, 180_000);
});
