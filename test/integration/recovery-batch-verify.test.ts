/**
 * `reconcile --verify` and batch consumers: a notification waiting inside a batch job has no
 * `n<id>` job of its own. Verify must count it as queued (not re-enqueue it, which would run it
 * twice), and still re-enqueue the notifications of a batch job that is really gone.
 */
import { Queue } from 'bullmq';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  reconcile,
  type Notification,
} from '../../src/index.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});
afterAll(async () => {
  await t.cleanup();
});

it('counts notifications inside batch jobs as queued, and re-enqueues a lost batch', async () => {
  const handled: string[] = [];
  const consumer = defineConsumer({
    id: 'indexer',
    channels: ['products'],
    batch: { size: 50, maxWaitMs: 0 },
    async handleBatch(ns: Notification[]) {
      for (const n of ns) handled.push(n.id);
    },
  });
  // Register the consumer, then stop its worker so the batch jobs wait in the queue.
  const registering = createWorker({ settings: apiSettings(t), consumers: [consumer] });
  await registering.start();
  await registering.close();

  await t.pool.query(
    `SELECT "${t.schema}".notify('products', jsonb_build_object('i', i))
       FROM generate_series(1, 300) AS i`,
  );
  const listener = createListener({ settings: apiSettings(t) });
  await listener.start();
  await waitFor(
    async () =>
      (
        await t.pool.query(
          `SELECT 1 FROM "${t.schema}".notifications WHERE bridged_at IS NULL LIMIT 1`,
        )
      ).rowCount === 0,
    { timeoutMs: 20_000, message: 'the backlog is bridged' },
  );
  await listener.stop();

  const queue = new Queue('indexer', { connection: t.redis, prefix: t.prefix });
  const waiting = await queue.getJobs(['waiting', 'prioritized'], 0, -1);
  expect(waiting.length).toBeGreaterThan(1);
  expect(waiting.every((job) => job.id?.startsWith('b'))).toBe(true);

  const first = await reconcile({ settings: apiSettings(t), verify: true });
  expect(first.enqueued).toBe(0);
  expect(first.alreadyQueued).toBe(300);

  // Lose one batch job (as a Redis wipe would): verify brings its notifications back.
  const lost = waiting[0];
  const lostIds = (lost.data as { batch: { id: string }[] }).batch.map((n) => n.id);
  await lost.remove();
  const second = await reconcile({ settings: apiSettings(t), verify: true });
  expect(second.enqueued).toBe(lostIds.length);
  expect(second.alreadyQueued).toBe(300 - lostIds.length);
  await queue.close();

  const worker = createWorker({ settings: apiSettings(t), consumers: [consumer] });
  await worker.start();
  await waitFor(() => handled.length >= 300, {
    timeoutMs: 30_000,
    message: 'every notification handled',
  });
  await worker.close();
  expect(handled.length).toBe(300);
  expect(new Set(handled).size).toBe(300);
});
