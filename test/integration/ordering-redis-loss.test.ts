/**
 * Ordered delivery across Redis losing every job mid-stream (issue 13): the consumer's keys are
 * wiped while notifications of three keys wait behind each other, `reconcile --verify` re-adds
 * the unfinished ones from the rows (with their keys), and the ledger still says which ones
 * finished: per key, runs stay one at a time and in order, and none is missing.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  migrate,
  notify,
  reconcile,
  type Notification,
  type PgqWorker,
} from '../../src/index.js';
import { apiSettings, createTestEnv, deleteKeysWithPrefix, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let worker: PgqWorker | undefined;

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});

afterAll(async () => {
  await worker?.close();
  await t.cleanup();
});

it('keeps per-key order and loses nothing when Redis loses the jobs and reconcile --verify re-adds them', async () => {
  const runs: { id: string; key: string; start: number; end: number }[] = [];
  worker = createWorker({
    settings: apiSettings(t),
    consumers: [
      {
        id: 'ordered',
        channels: ['events'],
        ordered: true,
        concurrency: 6,
        async handle(n: Notification) {
          const run = { id: n.id, key: n.key ?? '', start: performance.now(), end: 0 };
          await sleep(20 + Math.random() * 20);
          run.end = performance.now();
          runs.push(run);
        },
      },
    ],
  });
  await worker.start();
  const ids: string[] = [];
  for (let i = 0; i < 90; i++) {
    ids.push(await notify(t.pool, 'events', { i }, { schema: t.schema, key: `k${i % 3}` }));
  }
  const listener = createListener({ settings: apiSettings(t) });
  await listener.start();
  await waitFor(() => runs.length >= 15, { timeoutMs: 20_000, message: '15 handled' });
  await listener.stop();
  // Redis loses everything of this prefix: waiting, delayed and active jobs alike.
  await deleteKeysWithPrefix(t.redis, t.prefix);
  await sleep(500);
  const handledBefore = runs.length;
  expect(handledBefore).toBeLessThan(ids.length);
  await reconcile({ settings: apiSettings(t), verify: true });
  await waitFor(() => new Set(runs.map((r) => r.id)).size >= ids.length, {
    timeoutMs: 60_000,
    message: 'every notification handled after the repair',
  });
  await sleep(300);
  expect(new Set(runs.map((r) => r.id))).toEqual(new Set(ids));
  for (const key of ['k0', 'k1', 'k2']) {
    const list = runs.filter((r) => r.key === key).sort((a, b) => a.start - b.start);
    for (let i = 1; i < list.length; i++) {
      expect(
        list[i].start,
        `${key}: ${list[i].id} overlaps ${list[i - 1].id}`,
      ).toBeGreaterThanOrEqual(list[i - 1].end);
    }
    // First run of each notification, in the order they ran: ascending ids.
    const seen = new Set<string>();
    const order = list.filter((r) => !seen.has(r.id) && seen.add(r.id)).map((r) => BigInt(r.id));
    expect(order).toEqual([...order].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
  }
});
