/**
 * Ordered batch consumers (`ordered` with `batch` and `handleBatch`) in one process with real
 * Postgres, Redis and BullMQ (issue 13): a key's notifications appear in order within and
 * across batches, two calls holding one key never run at once, through transient failures with
 * backoff, merged groups and split batches; a transactional one commits each effect once, in
 * order; a dead letter blocks its key until `reconcile --failed` or `consumers skip` releases it
 * (the next one promoted, not timed out).
 */
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  migrate,
  PermanentError,
  reconcile,
  skipDelivery,
  status,
  type BatchConsumerDefinition,
  type Listener,
  type Notification,
  type PgqWorker,
} from '../../src/index.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let listener: Listener;
const running: PgqWorker[] = [];

/** One handler call: its notifications (id, key) in call order, when it ran, how it ended. */
interface Call {
  items: { id: string; key: string | null }[];
  start: number;
  end: number;
  ok: boolean;
}

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
  listener = createListener({ settings: apiSettings(t) });
  await listener.start();
});

afterAll(async () => {
  await Promise.all(running.map((w) => w.close()));
  await listener.stop();
  await t.cleanup();
});

async function startWorker(def: BatchConsumerDefinition): Promise<PgqWorker> {
  const worker = createWorker({ settings: apiSettings(t), consumers: [def] });
  await worker.start();
  running.push(worker);
  return worker;
}

/** `count` keyed notifications in one statement (so the listener packs them), keys cycling. */
async function notifyMany(channel: string, keys: string[], count: number): Promise<string[]> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT "${t.schema}".notify($1, jsonb_build_object('i', g), ($2::text[])[1 + g % $3])::text AS id
       FROM generate_series(0, $4 - 1) g ORDER BY g`,
    [channel, keys, keys.length, count],
  );
  return rows.map((r) => r.id);
}

/** Per key: no two calls holding it overlap, and successful calls saw it in id order, once. */
function assertOrderedCalls(calls: Call[], expected: Map<string, string[]>): void {
  const byKey = new Map<string, Call[]>();
  for (const c of calls) {
    for (const key of new Set(c.items.map((i) => i.key))) {
      if (key !== null) byKey.set(key, [...(byKey.get(key) ?? []), c]);
    }
  }
  for (const [key, ids] of expected) {
    const list = (byKey.get(key) ?? []).sort((a, b) => a.start - b.start);
    for (let i = 1; i < list.length; i++) {
      expect(list[i].start, `key ${key}: two calls at once`).toBeGreaterThanOrEqual(
        list[i - 1].end,
      );
    }
    const seen = list
      .filter((c) => c.ok)
      .flatMap((c) => c.items.filter((i) => i.key === key).map((i) => i.id));
    expect(seen, `key ${key}: handled in order, each once`).toEqual(ids);
  }
}

function recorder(calls: Call[], failRate: number) {
  return async (ns: Notification[]): Promise<void> => {
    const call: Call = {
      items: ns.map((n) => ({ id: n.id, key: n.key })),
      start: performance.now(),
      end: 0,
      ok: false,
    };
    calls.push(call);
    try {
      await sleep(Math.random() * 15);
      if (Math.random() < failRate) throw new Error('transient');
      call.ok = true;
    } finally {
      call.end = performance.now();
    }
  };
}

/** A batch of size 10 with one attempt: a call holding a poison notification fails for good. */
function poisonFails(
  done: string[],
): Pick<BatchConsumerDefinition, 'attempts' | 'batch' | 'handleBatch'> {
  return {
    attempts: 1,
    batch: { size: 10, maxWaitMs: 10 },
    handleBatch(ns: Notification[]) {
      if (ns.some((n) => (n.payload as { poison?: boolean }).poison)) {
        throw new PermanentError('poison');
      }
      done.push(...ns.map((n) => n.id));
    },
  };
}

describe('an ordered batch consumer', () => {
  it('sees each key in order within and across batches, never two calls of one key at once, through retries', async () => {
    const calls: Call[] = [];
    await startWorker({
      id: 'ob-order',
      channels: ['b1'],
      ordered: true,
      concurrency: 4,
      attempts: 12,
      backoff: { type: 'fixed', delay: 60 },
      batch: { size: 7, maxWaitMs: 30 },
      handleBatch: recorder(calls, 0.2),
    });
    const keys = ['a', 'b', 'c', 'd', 'e', 'f'];
    const ids = [...(await notifyMany('b1', keys, 150)), ...(await notifyMany('b1', keys, 90))];
    const expected = new Map<string, string[]>();
    ids.forEach((id, i) => {
      const key = keys[(i < 150 ? i : i - 150) % keys.length];
      expected.set(key, [...(expected.get(key) ?? []), id]);
    });
    await waitFor(
      () =>
        new Set(calls.filter((c) => c.ok).flatMap((c) => c.items.map((i) => i.id))).size >=
        ids.length,
      { timeoutMs: 90_000, message: 'every notification handled' },
    );
    await sleep(300);
    expect(calls.filter((c) => !c.ok).length).toBeGreaterThan(3);
    // Batches held several notifications, and several keys.
    expect(Math.max(...calls.map((c) => c.items.length))).toBeGreaterThan(2);
    expect(Math.max(...calls.map((c) => new Set(c.items.map((i) => i.key)).size))).toBeGreaterThan(
      1,
    );
    assertOrderedCalls(calls, expected);
  });

  it('transactional: each effect committed once, per key in order', async () => {
    const s = `"${t.schema}"`;
    await t.pool.query(
      `CREATE TABLE ${s}.effects (seq bigserial PRIMARY KEY, notification_id bigint NOT NULL, key text NOT NULL)`,
    );
    const calls: Call[] = [];
    const record = recorder(calls, 0);
    await startWorker({
      id: 'ob-tx',
      channels: ['b2'],
      ordered: true,
      transactional: true,
      concurrency: 3,
      attempts: 12,
      backoff: { type: 'fixed', delay: 60 },
      batch: { size: 5, maxWaitMs: 20 },
      async handleBatch(ns, _job, ctx) {
        await record(ns);
        for (const n of ns) {
          await ctx.db.query(`INSERT INTO ${s}.effects (notification_id, key) VALUES ($1, $2)`, [
            n.id,
            n.key,
          ]);
        }
        // Fails after writing: the transaction rolls the effects back.
        if (Math.random() < 0.25) {
          calls[calls.length - 1].ok = false;
          throw new Error('transient, after the writes');
        }
      },
    });
    const keys = ['p', 'q', 'r', 's'];
    const ids = await notifyMany('b2', keys, 80);
    await waitFor(
      async () =>
        (await t.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${s}.effects`)).rows[0]
          .n >= ids.length,
      { timeoutMs: 90_000, message: 'every effect committed' },
    );
    await sleep(500);
    const { rows } = await t.pool.query<{ notification_id: string; key: string }>(
      `SELECT notification_id::text, key FROM ${s}.effects ORDER BY seq`,
    );
    expect(rows.length).toBe(ids.length);
    for (const [i, key] of keys.entries()) {
      const want = ids.filter((_, j) => j % keys.length === i);
      expect(
        rows.filter((r) => r.key === key).map((r) => r.notification_id),
        key,
      ).toEqual(want);
    }
  });

  it('blocks a key behind a dead letter; reconcile --failed releases it and the next ones are promoted', async () => {
    const calls: Call[] = [];
    let poison = true;
    await startWorker({
      id: 'ob-block',
      channels: ['b3'],
      ordered: true,
      concurrency: 2,
      attempts: 1,
      batch: { size: 10, maxWaitMs: 10 },
      handleBatch(ns) {
        const call: Call = {
          items: ns.map((n) => ({ id: n.id, key: n.key })),
          start: performance.now(),
          end: performance.now(),
          ok: false,
        };
        calls.push(call);
        if (poison && ns.some((n) => (n.payload as { poison?: boolean }).poison)) {
          throw new PermanentError('poison');
        }
        call.ok = true;
      },
    });
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT "${t.schema}".notify('b3', p::jsonb, k)::text AS id
         FROM (VALUES (1, '{}', 'A'), (2, '{"poison": true}', 'A'), (3, '{}', 'A'), (4, '{}', 'B'),
                      (5, '{}', 'A'), (6, '{}', 'B')) v(o, p, k) ORDER BY o`,
    );
    const [a1, a2, a3, b1, a4, b2] = rows.map((r) => r.id);
    const okIds = (): string[] =>
      calls.filter((c) => c.ok).flatMap((c) => c.items.map((i) => i.id));
    await waitFor(
      async () =>
        (await status({ settings: apiSettings(t) })).consumers.find((c) => c.id === 'ob-block')
          ?.blockedKeys?.count === 1,
      { timeoutMs: 20_000, message: 'A blocked' },
    );
    await waitFor(() => [a1, b1, b2].every((id) => okIds().includes(id)), {
      timeoutMs: 20_000,
      message: 'A1, B1, B2 handled',
    });
    await sleep(1500);
    expect(okIds()).not.toContain(a3);
    expect(okIds()).not.toContain(a4);
    const report = await status({ settings: apiSettings(t) });
    expect(report.consumers.find((c) => c.id === 'ob-block')?.blockedKeys).toEqual({
      count: 1,
      oldest: expect.objectContaining({ key: 'A', notificationId: a2 }),
    });
    poison = false;
    const result = await reconcile({
      settings: apiSettings(t),
      failed: true,
      consumers: ['ob-block'],
    });
    expect(result.replayed).toBeGreaterThanOrEqual(1);
    const releasedAt = performance.now();
    await waitFor(() => [a2, a3, a4].every((id) => okIds().includes(id)), {
      timeoutMs: 20_000,
      message: 'A2 replayed, then A3 and A4',
    });
    // Promoted, not waiting out their delay (60 s behind a dead letter).
    expect(performance.now() - releasedAt).toBeLessThan(4000);
    const order = calls
      .filter((c) => c.ok)
      .flatMap((c) => c.items.filter((i) => i.key === 'A').map((i) => i.id));
    expect(order).toEqual([a1, a2, a3, a4]);
  });

  it('consumers skip gives up the blocked head and the key moves on at once', async () => {
    const done: string[] = [];
    await startWorker({
      id: 'ob-skip',
      channels: ['b4'],
      ordered: true,
      ...poisonFails(done),
    });
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT "${t.schema}".notify('b4', p::jsonb, 'R')::text AS id
         FROM (VALUES (1, '{}'), (2, '{"poison": true}'), (3, '{}'), (4, '{}')) v(o, p) ORDER BY o`,
    );
    const [r1, r2, r3, r4] = rows.map((r) => r.id);
    await waitFor(
      async () =>
        (await status({ settings: apiSettings(t) })).consumers.find((c) => c.id === 'ob-skip')
          ?.blockedKeys?.count === 1,
      { timeoutMs: 20_000, message: 'R blocked' },
    );
    await sleep(1500);
    expect(done).toEqual([r1]);
    const skipped = await skipDelivery({
      settings: apiSettings(t),
      consumer: 'ob-skip',
      notificationId: r2,
    });
    expect(skipped.changed).toBe(true);
    const releasedAt = performance.now();
    await waitFor(() => done.length >= 3, { timeoutMs: 20_000, message: 'R3 and R4 handled' });
    expect(done).toEqual([r1, r3, r4]);
    expect(performance.now() - releasedAt).toBeLessThan(3000);
  });

  it('runs two packs that each hold a key the other waits for (no deadlock), in order, by promotion', async () => {
    const calls: string[][] = [];
    await startWorker({
      id: 'ob-cross',
      channels: ['b6'],
      ordered: true,
      concurrency: 2,
      batch: { size: 10, maxWaitMs: 0 },
      handleBatch(ns) {
        calls.push(ns.map((n) => n.id));
      },
    });
    // Stored as bridged, so the listener leaves them alone: the test packs them itself.
    const { rows } = await t.pool.query<{ id: string; key: string; created_at: Date }>(
      `INSERT INTO "${t.schema}".notifications (channel, payload, key, bridged_at)
       SELECT 'b6', '{}', k, now() FROM unnest(ARRAY['K', 'J', 'K', 'J', 'K']) WITH ORDINALITY u(k, o)
        ORDER BY o RETURNING id::text, key, created_at`,
    );
    rows.sort((a, b) => Number(a.id) - Number(b.id));
    const [k1, j1, k2, j2, k3] = rows.map((r) => ({
      id: r.id,
      channel: 'b6',
      payload: '{}',
      context: null,
      createdAt: r.created_at.toISOString(),
      key: r.key,
    }));
    // Pack A needs K2 (in B) before K3; pack B needs K1 and J1 (in A): waiting for whole packs
    // would never end. Several listeners' claims can interleave like this.
    const queue = new Queue('ob-cross', { connection: t.redis, prefix: t.prefix });
    const started = performance.now();
    try {
      await queue.addBulk([
        { name: 'batch', data: { batch: [k1, j1, k3] }, opts: { jobId: 'bA' } },
        { name: 'batch', data: { batch: [k2, j2] }, opts: { jobId: 'bB' } },
      ]);
      await waitFor(() => calls.flat().length >= 5, {
        timeoutMs: 20_000,
        message: 'all five handled',
      });
    } finally {
      await queue.close();
    }
    expect(calls).toEqual([[k1.id, j1.id], [k2.id, j2.id], [k3.id]]);
    // Promoted each time (the first safety-net wait is 3.75 s or more).
    expect(performance.now() - started).toBeLessThan(3500);
  });

  it("with onDeadLetter 'skip' lets the key go on after a dead letter", async () => {
    const done: string[] = [];
    await startWorker({
      id: 'ob-skipping',
      channels: ['b5'],
      ordered: { onDeadLetter: 'skip' },
      ...poisonFails(done),
    });
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT "${t.schema}".notify('b5', p::jsonb, 'S')::text AS id
         FROM (VALUES (1, '{}'), (2, '{"poison": true}'), (3, '{}')) v(o, p) ORDER BY o`,
    );
    const [s1, , s3] = rows.map((r) => r.id);
    await waitFor(() => done.length >= 2, { timeoutMs: 20_000, message: 'S1 and S3 handled' });
    expect(done).toEqual([s1, s3]);
  });
});
