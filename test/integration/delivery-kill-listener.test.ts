/**
 * Issue 2: `kill -9` of a listener in the middle of a batch, then a new listener: nothing lost,
 * nothing handled twice.
 *
 * To kill it truly mid-batch, Redis (a throwaway server: the pause would stall everyone else on
 * the shared one) is paused for writes while the listener bridges a large backlog: its next
 * batch is then claimed and marked in an open transaction, waiting for addBulk. That is when it
 * gets SIGKILL.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { startRedis, type ThrowawayRedis } from '../support/servers.js';
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
import { sleep, waitFor } from '../support/wait.js';

const BACKLOG = 4000;

let redis: ThrowawayRedis;
let t: TestEnv;
beforeAll(async () => {
  redis = await startRedis();
  t = createTestEnv({ redisUrl: redis.url });
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t?.cleanup();
  await redis?.destroy();
  removeConsumerDirs();
});

async function count(sql: string): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(sql);
  return rows[0].n;
}

describe('kill -9 of a listener mid-batch', () => {
  it('loses nothing and handles nothing twice once a new listener takes over', async () => {
    const dir = writeConsumers({
      'rec.mjs': `${RECORDER}
export default defineConsumer({ id: 'rec', channels: ['orders'], concurrency: 20,
  async handle(n) { await record('rec', n); } });`,
    });
    const work = await startWork(t.env, dir, 1);
    await t.pool.query(
      `SELECT "${t.schema}".notify('orders', jsonb_build_object('i', i))
         FROM generate_series(1, ${BACKLOG}) AS i`,
    );
    const notifications = `"${t.schema}".notifications`;

    const first = await startListen(t.env, ['--batch-size', '20']);
    await waitFor(
      async () =>
        (await count(
          `SELECT count(*)::int AS n FROM ${notifications} WHERE bridged_at IS NOT NULL`,
        )) >= 200,
      { timeoutMs: 20_000, message: 'the listener bridging' },
    );

    // Freeze Redis writes: the listener's batch in flight cannot complete.
    await t.redis.call('CLIENT', 'PAUSE', '20000', 'WRITE');
    let inFlight: string[] = [];
    // The same rows held for 500 ms: a batch waiting on the paused Redis, not one whose addBulk
    // got in before the pause and whose COMMIT is just on its way (it would be bridged after all).
    let heldSince = 0;
    let held = '';
    try {
      // The batch in flight: rows the listener holds locked, in a transaction left open.
      await waitFor(
        async () => {
          const probe = new pg.Client({ connectionString: t.databaseUrl });
          await probe.connect();
          try {
            await probe.query('BEGIN');
            const { rows } = await probe.query<{ id: string }>(
              `SELECT id::text AS id FROM ${notifications} n
                WHERE bridged_at IS NULL
                  AND NOT EXISTS (SELECT 1 FROM ${notifications} m
                                   WHERE m.id = n.id AND m.bridged_at IS NULL
                                   FOR UPDATE SKIP LOCKED)`,
            );
            await probe.query('ROLLBACK');
            inFlight = rows.map((r) => r.id);
          } finally {
            await probe.end();
          }
          const { rows: idle } = await t.pool.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM pg_stat_activity a
              WHERE a.state = 'idle in transaction'
                AND EXISTS (SELECT 1 FROM pg_locks l
                             WHERE l.pid = a.pid AND l.relation = $1::regclass)`,
            [`${notifications}`],
          );
          // One batch per lane: a listener with a backlog runs a second lane (bridge.ts).
          const claimed =
            inFlight.length > 0 && idle[0].n >= 1 && inFlight.length === idle[0].n * 20;
          const key = claimed ? inFlight.join(',') : '';
          if (key !== held) {
            held = key;
            heldSince = Date.now();
          }
          return claimed && Date.now() - heldSince >= 500;
        },
        { timeoutMs: 10_000, message: 'a batch claimed and waiting for Redis' },
      );
      expect([20, 40]).toContain(inFlight.length);
      first.kill('SIGKILL');
      expect((await first.waitForExit()).signal).toBe('SIGKILL');
      // Postgres notices the dead connection and rolls the batch back.
      await waitFor(
        async () =>
          (await count(
            `SELECT count(*)::int AS n FROM pg_locks WHERE relation = '${notifications}'::regclass`,
          )) === 0,
        { message: 'the killed transaction rolled back' },
      );
    } finally {
      await t.redis.call('CLIENT', 'UNPAUSE');
    }
    const { rows: afterKill } = await t.pool.query<{ id: string }>(
      `SELECT id::text AS id FROM ${notifications} WHERE id = ANY($1::bigint[]) AND bridged_at IS NOT NULL`,
      [inFlight],
    );
    expect(afterKill).toEqual([]); // the batch in flight is unbridged again, not lost

    const second = await startListen(t.env, ['--batch-size', '20']);
    await waitForHandled(t.pool, t.schema, BACKLOG, 60_000);
    await sleep(1000);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      rec: { runs: BACKLOG, distinct: BACKLOG, duplicates: 0 },
    });
    expect(
      await count(`SELECT count(*)::int AS n FROM ${notifications} WHERE bridged_at IS NULL`),
    ).toBe(0);
    await Promise.all([second, work].map((h) => stopGracefully(h)));
  }, 120_000);
});
