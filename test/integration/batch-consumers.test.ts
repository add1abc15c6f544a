/**
 * Batch consumers (`batch: { size, maxWaitMs }` + `handleBatch`): packing by the bridge, merging
 * by the worker, per-notification ledger, retries, split on final failure, PermanentError, and
 * duplicates skipped through the ledger.
 */
import { Queue } from 'bullmq';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  notify,
  PermanentError,
  type ConsumerDefinition,
  type Listener,
  type Notification,
  type PgqWorker,
} from '../../src/index.js';
import { batchJobIdFor } from '../../src/bridge/pack.js';
import { createRedis } from '../../src/redis.js';
import { silentLogger } from '../../src/log.js';
import { apiSettings, createTestEnv, randomId, type TestEnv } from '../support/env.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
const running: (Listener | PgqWorker)[] = [];

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});
afterEach(async () => {
  for (const r of running.splice(0)) {
    if ('close' in r) await r.close();
    else await r.stop();
  }
});
afterAll(async () => {
  await t.cleanup();
});

async function startWorker(consumer: ConsumerDefinition): Promise<PgqWorker> {
  const worker = createWorker({ settings: apiSettings(t), consumers: [consumer] });
  running.push(worker);
  await worker.start();
  return worker;
}

async function startListener(batchSize?: number): Promise<Listener> {
  const listener = createListener({ settings: apiSettings(t), batchSize });
  running.push(listener);
  await listener.start();
  return listener;
}

/** Stores `count` notifications on `channel` in one statement (a backlog). */
async function backlog(channel: string, count: number, bad: number[] = []): Promise<void> {
  await t.pool.query(
    `SELECT "${t.schema}".notify($1, jsonb_build_object('i', i, 'bad', i = ANY($3::int[])))
       FROM generate_series(1, $2::int) AS i`,
    [channel, count, bad],
  );
}

async function ledger(consumer: string): Promise<{ completed: number; failed: number }> {
  const { rows } = await t.pool.query<{ status: string; n: number }>(
    `SELECT status, count(*)::int AS n FROM "${t.schema}".deliveries
      WHERE consumer_id = $1 GROUP BY status`,
    [consumer],
  );
  const of = (s: string): number => rows.find((r) => r.status === s)?.n ?? 0;
  return { completed: of('completed'), failed: of('failed') };
}

type Payload = { i: number; bad: boolean };

describe('batch consumers', () => {
  it('get a backlog in handler calls of at most `size`, each notification once', async () => {
    const channel = `c${randomId()}`;
    const calls: number[] = [];
    const seen = new Map<string, number>();
    await startWorker(
      defineConsumer<Payload>({
        id: `b${randomId()}`,
        channels: [channel],
        concurrency: 2,
        batch: { size: 100, maxWaitMs: 0 },
        handleBatch(notifications: Notification<Payload>[]) {
          calls.push(notifications.length);
          for (const n of notifications) seen.set(n.id, (seen.get(n.id) ?? 0) + 1);
        },
      }),
    );
    await backlog(channel, 450);
    await startListener();
    await waitFor(() => seen.size === 450, { message: '450 notifications handled' });
    expect([...seen.values()].every((n) => n === 1)).toBe(true);
    expect(Math.max(...calls)).toBe(100);
    // A backlog fills its batches: 4 full ones and the rest.
    expect(calls.filter((n) => n === 100).length).toBeGreaterThanOrEqual(4);
  });

  it('retry a failing batch, then split it: one bad notification fails alone', async () => {
    const channel = `c${randomId()}`;
    const id = `b${randomId()}`;
    const handled = new Map<number, number>();
    await startWorker(
      defineConsumer<Payload>({
        id,
        channels: [channel],
        attempts: 2,
        backoff: 10,
        batch: { size: 20, maxWaitMs: 0 },
        handleBatch(notifications: Notification<Payload>[]) {
          if (notifications.some((n) => n.payload.bad)) throw new Error('cannot index this one');
          for (const n of notifications)
            handled.set(n.payload.i, (handled.get(n.payload.i) ?? 0) + 1);
        },
      }),
    );
    await backlog(channel, 20, [7]);
    await startListener();
    await waitFor(
      async () => (await ledger(id)).completed === 19 && (await ledger(id)).failed === 1,
      {
        message: '19 completed and 1 failed in the ledger',
      },
    );
    expect(handled.size).toBe(19);
    expect([...handled.values()].every((n) => n === 1)).toBe(true);
    expect(handled.has(7)).toBe(false);
    const { rows } = await t.pool.query<{ attempts: number; last_error: string }>(
      `SELECT d.attempts, d.last_error FROM "${t.schema}".deliveries d
         JOIN "${t.schema}".notifications n ON n.id = d.notification_id
        WHERE d.consumer_id = $1 AND d.status = 'failed' AND (n.payload->>'i')::int = 7`,
      [id],
    );
    expect(rows).toEqual([{ attempts: 2, last_error: 'cannot index this one' }]);
  });

  it('split at once on PermanentError, and the bad notification is a dead letter at once', async () => {
    const channel = `c${randomId()}`;
    const id = `b${randomId()}`;
    let calls = 0;
    await startWorker(
      defineConsumer<Payload>({
        id,
        channels: [channel],
        attempts: 5,
        backoff: 60_000,
        batch: { size: 10, maxWaitMs: 0 },
        handleBatch(notifications: Notification<Payload>[]) {
          calls++;
          if (notifications.some((n) => n.payload.bad)) throw new PermanentError('malformed');
        },
      }),
    );
    await backlog(channel, 10, [3]);
    await startListener();
    await waitFor(
      async () => (await ledger(id)).completed === 9 && (await ledger(id)).failed === 1,
      {
        message: '9 completed and 1 failed without waiting for a backoff',
      },
    );
    // One batch call, then one call per notification after the split.
    expect(calls).toBe(11);
  });

  it('merge small jobs within maxWaitMs, and a failed merge does not fail the others', async () => {
    const channel = `c${randomId()}`;
    const id = `b${randomId()}`;
    const calls: number[] = [];
    const handled = new Set<number>();
    await startWorker(
      defineConsumer<Payload>({
        id,
        channels: [channel],
        attempts: 1,
        batch: { size: 50, maxWaitMs: 400 },
        handleBatch(notifications: Notification<Payload>[]) {
          calls.push(notifications.length);
          if (notifications.some((n) => n.payload.bad)) throw new Error('bad one');
          for (const n of notifications) handled.add(n.payload.i);
        },
      }),
    );
    await startListener();
    // One notification per transaction, a few ms apart: the bridge makes small jobs.
    for (let i = 1; i <= 30; i++) {
      await notify(t.pool, channel, { i, bad: i === 12 }, { schema: t.schema });
      await new Promise((r) => setTimeout(r, 5));
    }
    await waitFor(
      async () => (await ledger(id)).completed === 29 && (await ledger(id)).failed === 1,
      {
        message: '29 completed and 1 dead letter',
      },
    );
    expect(handled.size).toBe(29);
    expect(handled.has(12)).toBe(false);
    // Merged: fewer handler calls than jobs of one notification each would need.
    expect(Math.max(...calls)).toBeGreaterThan(3);
  });

  it('skip notifications the ledger records as completed (the same rows packed again)', async () => {
    const channel = `c${randomId()}`;
    const id = `b${randomId()}`;
    const handled: string[] = [];
    await startWorker(
      defineConsumer({
        id,
        channels: [channel],
        batch: { size: 100, maxWaitMs: 0 },
        handleBatch(notifications: Notification[]) {
          for (const n of notifications) handled.push(n.id);
        },
      }),
    );
    await backlog(channel, 5);
    await startListener();
    await waitFor(async () => (await ledger(id)).completed === 5, { message: 'the first pass' });
    // The same rows in a different grouping (as after a commit that failed once Redis had the
    // jobs): a new job id, whose notifications are all completed already.
    const { rows } = await t.pool.query<{ id: string; payload: string; created_at: Date }>(
      `SELECT id::text, payload::text, created_at FROM "${t.schema}".notifications
        WHERE channel = $1 ORDER BY id LIMIT 3`,
      [channel],
    );
    const redis = createRedis({ redisUrl: t.redisUrl }, silentLogger(), 'test');
    const queue = new Queue(id, { connection: redis, prefix: t.prefix });
    try {
      const job = await queue.add(
        'batch',
        {
          batch: rows.map((r) => ({
            id: r.id,
            channel,
            payload: r.payload,
            context: null,
            createdAt: r.created_at.toISOString(),
          })),
        },
        { jobId: batchJobIdFor(rows.map((r) => r.id)) },
      );
      await waitFor(async () => (await job.getState()) === 'completed', {
        message: 'the job done',
      });
      expect(handled.length).toBe(5);
    } finally {
      await queue.close();
      redis.disconnect();
    }
  });
  it('leave out what a twin job completed while they waited for a slot (the same rows packed twice)', async () => {
    const channel = `c${randomId()}`;
    const id = `b${randomId()}`;
    const runs = new Map<string, number>();
    await startWorker(
      defineConsumer({
        id,
        channels: [channel],
        concurrency: 1, // the second job waits for the first one's call to end
        // Merging on: BullMQ holds extra jobs, so both are fetched (and ask the ledger) at once;
        // neither is smaller than `size`, so each runs in a call of its own.
        batch: { size: 4, maxWaitMs: 50 },
        async handleBatch(notifications: Notification[]) {
          await new Promise((resolve) => setTimeout(resolve, 300));
          for (const n of notifications) runs.set(n.id, (runs.get(n.id) ?? 0) + 1);
        },
      }),
    );
    await backlog(channel, 5);
    const { rows } = await t.pool.query<{ id: string; payload: string; created_at: Date }>(
      `SELECT id::text, payload::text, created_at FROM "${t.schema}".notifications
        WHERE channel = $1 ORDER BY id`,
      [channel],
    );
    const entry = (r: (typeof rows)[number]) => ({
      id: r.id,
      channel,
      payload: r.payload,
      context: null,
      createdAt: r.created_at.toISOString(),
    });
    const redis = createRedis({ redisUrl: t.redisUrl }, silentLogger(), 'test');
    const queue = new Queue(id, { connection: redis, prefix: t.prefix });
    try {
      // Both jobs are fetched and ask the ledger before either call ends (nothing completed yet).
      await queue.addBulk(
        [rows, rows.slice(0, 4)].map((group) => ({
          name: 'batch',
          data: { batch: group.map(entry) },
          // As the listener adds them for a consumer with removeOnComplete: outcomes are
          // written before a job completes.
          opts: { jobId: batchJobIdFor(group.map((r) => r.id)), removeOnComplete: true },
        })),
      );
      await waitFor(async () => (await ledger(id)).completed === 5, { message: 'five completed' });
      await waitFor(async () => (await queue.getJobCounts('waiting', 'active')).active === 0, {
        message: 'both jobs finished',
      });
      expect([...runs.values()]).toEqual([1, 1, 1, 1, 1]);
    } finally {
      await queue.close();
      redis.disconnect();
    }
  });
});
