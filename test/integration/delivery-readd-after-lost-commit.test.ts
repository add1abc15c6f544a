/**
 * A listener that dies after `addBulk` reached Redis but before its COMMIT leaves the rows
 * unbridged, and the next listener adds the same `n<id>` jobs again. When BullMQ already removed
 * the finished jobs (`removeOnComplete: true`), those are brand-new jobs to BullMQ: only the
 * delivery ledger knows they ran. The worker must ask it before every attempt, so each handler
 * runs exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { planJobs } from '../../src/bridge/plan.js';
import { Store, type NotificationRow } from '../../src/db/store.js';
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
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  dir = writeConsumers({
    'readd.mjs': `${RECORDER}
export default defineConsumer({ id: 'readd', channels: ['orders'], removeOnComplete: true,
  async handle(n) { await record('readd', n); } });`,
  });
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

/** What a dying listener got into Redis: the jobs the bridge plans for these rows, via addBulk. */
async function addJobsAsADyingListenerWould(): Promise<number> {
  const store = new Store(t.schema);
  const { rows } = await t.pool.query<NotificationRow>(
    `SELECT id::text, channel, payload::text AS payload, context::text AS context, created_at
       FROM "${t.schema}".notifications WHERE bridged_at IS NULL ORDER BY id`,
  );
  const plan = planJobs(rows, await store.readSubscriptions(t.pool)).jobs;
  const jobs = plan.get('readd') ?? [];
  const queue = new Queue('readd', { connection: t.redis, prefix: t.prefix });
  try {
    await queue.addBulk(jobs);
  } finally {
    await queue.close();
  }
  return jobs.length;
}

async function queueIsIdle(): Promise<boolean> {
  const queue = new Queue('readd', { connection: t.redis, prefix: t.prefix });
  try {
    const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
    return Object.values(counts).every((n) => n === 0);
  } finally {
    await queue.close();
  }
}

describe('a job added again after its twin completed and was removed', () => {
  it('is not handled again: the ledger decides the first attempt', async () => {
    const work = await startWork(t.env, dir, 1);
    // Stored with no listener running: the rows stay unbridged.
    await sendNotifications(t.databaseUrl, t.schema, 20, 2, () => 'orders');
    expect(await addJobsAsADyingListenerWould()).toBe(20);
    await waitForHandled(t.pool, t.schema, 20, 30_000);
    // BullMQ removed the completed jobs; their outcomes are in the ledger.
    await waitFor(
      async () => (await t.redis.exists(`${t.prefix}:readd:completed`)) === 0 && queueIsIdle(),
      { timeoutMs: 10_000, message: 'completed jobs removed' },
    );
    const { rows: ledger } = await t.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM "${t.schema}".deliveries
        WHERE consumer_id = 'readd' AND status = 'completed'`,
    );
    expect(ledger[0].n).toBe(20);

    // The next listener bridges the still unbridged rows: the same job ids, new jobs.
    const listen = await startListen(t.env);
    await waitFor(
      async () => {
        const { rows } = await t.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
        );
        return rows[0].n === 0;
      },
      { timeoutMs: 20_000, message: 'every row bridged' },
    );
    await waitFor(queueIsIdle, { timeoutMs: 20_000, message: 'the re-added jobs finished' });
    await sleep(500);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      readd: { runs: 20, distinct: 20, duplicates: 0 },
    });
    // The re-added jobs did go through the worker (and were skipped), not vanish.
    expect(work.logs().filter((l) => l.level === 50)).toEqual([]);
    await stopGracefully(listen);
    await stopGracefully(work);
  }, 90_000);
});
