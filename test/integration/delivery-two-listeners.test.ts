/**
 * Issue 2: two `listen` processes at once on the same backlog: no duplicate job, no missed row.
 * Both are held at the start line (the subscriptions lock) so they really race for the backlog.
 */
import { Queue } from 'bullmq';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  handledSummary,
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

const BACKLOG = 3000;

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

/** Counts the events of one kind in a BullMQ queue's event stream. */
async function queueEvents(queue: string): Promise<Record<string, number>> {
  const entries = (await t.redis.xrange(`${t.prefix}:${queue}:events`, '-', '+')) as [
    string,
    string[],
  ][];
  const counts: Record<string, number> = {};
  for (const [, fields] of entries) {
    const event = fields[fields.indexOf('event') + 1];
    counts[event] = (counts[event] ?? 0) + 1;
  }
  return counts;
}

describe('two listeners on one backlog', () => {
  it('bridge each row once between them: no duplicate job, no missed row', async () => {
    const dir = writeConsumers({
      'rec.mjs': `${RECORDER}
export default defineConsumer({ id: 'rec', channels: ['orders'], concurrency: 20,
  async handle(n) { await record('rec', n); } });`,
    });
    // Register the consumer, then stop its worker so the jobs stay visible in the queue.
    const registering = await startWork(t.env, dir, 1);
    await stopGracefully(registering);

    await t.pool.query(
      `SELECT "${t.schema}".notify('orders', jsonb_build_object('i', i))
         FROM generate_series(1, ${BACKLOG}) AS i`,
    );

    // Hold the subscriptions lock exclusively (as a consumer registration does): both listeners'
    // first batch waits on it, so they start bridging at the same moment.
    const gate = new pg.Client({ connectionString: t.databaseUrl });
    await gate.connect();
    await gate.query('BEGIN');
    await gate.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [
      `pgq_bridge.subscriptions:${t.schema}`,
    ]);
    const gatePid = (await gate.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]
      .pid;
    const env = { ...t.env, LOG_LEVEL: 'debug' };
    const listeners = await Promise.all([
      startListen(env, ['--batch-size', '25']),
      startListen(env, ['--batch-size', '25']),
    ]);
    await waitFor(
      async () => {
        const { rows } = await t.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`,
          [gatePid],
        );
        return rows[0].n === 2;
      },
      { message: 'both listeners waiting at the start line' },
    );
    await gate.query('COMMIT');
    await gate.end();

    await waitFor(
      async () => {
        const { rows } = await t.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
        );
        return rows[0].n === 0;
      },
      { timeoutMs: 30_000, message: 'backlog bridged' },
    );
    // Let any straggling batch finish before counting.
    await sleep(500);

    // Each row was claimed by exactly one listener, and both did part of the work.
    const bridgedBy = listeners.map((l) =>
      l
        .logs()
        .filter(hasMsg('batch bridged'))
        .reduce((sum, line) => sum + Number(line.rows), 0),
    );
    expect(bridgedBy[0] + bridgedBy[1]).toBe(BACKLOG);
    expect(bridgedBy[0]).toBeGreaterThan(0);
    expect(bridgedBy[1]).toBeGreaterThan(0);

    // BullMQ saw each job added once: no duplicate add, nothing missing.
    const events = await queueEvents('rec');
    expect(events.added).toBe(BACKLOG);
    expect(events.duplicated ?? 0).toBe(0);
    const queue = new Queue('rec', { connection: t.redis, prefix: t.prefix });
    const counts = await queue.getJobCounts('waiting', 'active', 'completed', 'failed');
    await queue.close();
    expect(counts).toEqual({ waiting: BACKLOG, active: 0, completed: 0, failed: 0 });

    // And the consumer handles each one exactly once.
    const work = await startWork(t.env, dir, 1);
    await waitForHandled(t.pool, t.schema, BACKLOG);
    await sleep(500);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      rec: { runs: BACKLOG, distinct: BACKLOG, duplicates: 0 },
    });
    await Promise.all([...listeners, work].map((h) => stopGracefully(h)));
  }, 120_000);
});
