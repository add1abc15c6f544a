/**
 * An ordered batch consumer across Redis losing every job mid-stream (issue 13): packs of
 * several keys wait behind each other (some recorded as waiting in Redis), the consumer's keys
 * are wiped, and `reconcile --verify` re-adds the unfinished notifications from the rows (packed
 * again, with their keys); the ledger still says which ones finished: per key, calls stay one at
 * a time and in order, and none is missing.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  migrate,
  reconcile,
  type Notification,
  type PgqWorker,
} from '../../src/index.js';
import { apiSettings, createTestEnv, deleteKeysWithPrefix, type TestEnv } from '../support/env.js';
import { expectOneAtATime } from '../support/ordering.js';
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

it('keeps per-key order across batches and loses nothing when Redis loses the jobs and reconcile --verify re-adds them', async () => {
  const calls: { items: { id: string; key: string }[]; started: number; ended: number }[] = [];
  worker = createWorker({
    settings: apiSettings(t),
    consumers: [
      {
        id: 'ordered-batch',
        channels: ['events'],
        ordered: true,
        concurrency: 3,
        batch: { size: 6, maxWaitMs: 20 },
        async handleBatch(ns: Notification[]) {
          const started = performance.now();
          await sleep(30 + Math.random() * 30);
          calls.push({
            items: ns.map((n) => ({ id: n.id, key: n.key ?? '' })),
            started,
            ended: performance.now(),
          });
        },
      },
    ],
  });
  await worker.start();
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT "${t.schema}".notify('events', jsonb_build_object('i', g), 'k' || (g % 4))::text AS id
       FROM generate_series(0, 119) g ORDER BY g`,
  );
  const ids = rows.map((r) => r.id);
  const listener = createListener({ settings: apiSettings(t) });
  await listener.start();
  const handled = (): Set<string> => new Set(calls.flatMap((c) => c.items.map((i) => i.id)));
  await waitFor(() => handled().size >= 20, { timeoutMs: 20_000, message: '20 handled' });
  await listener.stop();
  // Redis loses everything of this prefix: waiting, delayed and active jobs, waiting records.
  await deleteKeysWithPrefix(t.redis, t.prefix);
  await sleep(500);
  expect(handled().size).toBeLessThan(ids.length);
  await reconcile({ settings: apiSettings(t), verify: true });
  await waitFor(() => handled().size >= ids.length, {
    timeoutMs: 60_000,
    message: 'every notification handled after the repair',
  });
  await sleep(300);
  expect(handled()).toEqual(new Set(ids));
  for (const key of ['k0', 'k1', 'k2', 'k3']) {
    const list = calls
      .filter((c) => c.items.some((i) => i.key === key))
      .sort((a, b) => a.started - b.started);
    expectOneAtATime(key, list);
    // First handling of each notification, in the order the calls ran: ascending ids.
    const seen = new Set<string>();
    const order = list
      .flatMap((c) => c.items.filter((i) => i.key === key).map((i) => i.id))
      .filter((id) => !seen.has(id) && seen.add(id))
      .map((id) => BigInt(id));
    expect(order).toEqual([...order].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
  }
});
