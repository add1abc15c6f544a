/**
 * Ordered consumers in one process with real Postgres, Redis and BullMQ (issue 13): same-key
 * notifications run one at a time in id order through transient failures with backoff, while
 * other keys go on; a dead letter blocks its key (`onDeadLetter: 'block'`) until
 * `reconcile --failed` replays it, or lets the key go on (`'skip'`); status counts blocked keys.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  migrate,
  notify,
  PermanentError,
  reconcile,
  skipDelivery,
  startBoard,
  status,
  type Listener,
  type Notification,
  type PgqWorker,
  type SingleConsumerDefinition,
} from '../../src/index.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let listener: Listener;
const running: PgqWorker[] = [];

interface Run {
  id: string;
  key: string | null;
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

async function startWorker(def: SingleConsumerDefinition): Promise<PgqWorker> {
  const worker = createWorker({ settings: apiSettings(t), consumers: [def] });
  await worker.start();
  running.push(worker);
  return worker;
}

/** Checks that per key, runs never overlap and successful runs follow id order. */
function assertSequentialPerKey(runs: Run[]): void {
  const byKey = new Map<string, Run[]>();
  for (const r of runs) {
    if (r.key === null) continue;
    const list = byKey.get(r.key) ?? [];
    list.push(r);
    byKey.set(r.key, list);
  }
  for (const [key, list] of byKey) {
    list.sort((a, b) => a.start - b.start);
    for (let i = 1; i < list.length; i++) {
      expect(
        list[i].start,
        `key ${key}: run ${list[i].id} overlaps ${list[i - 1].id}`,
      ).toBeGreaterThanOrEqual(list[i - 1].end);
    }
    const done = list.filter((r) => r.ok).map((r) => BigInt(r.id));
    const sorted = [...done].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    expect(done, `key ${key}: completion order`).toEqual(sorted);
  }
}

describe('an ordered consumer', () => {
  it('runs same-key notifications one at a time in order through retries with backoff, keys in parallel', async () => {
    const runs: Run[] = [];
    let active = 0;
    let maxActive = 0;
    const failedOnce = new Set<string>();
    await startWorker({
      id: 'ordered',
      channels: ['o1'],
      ordered: true,
      concurrency: 8,
      attempts: 5,
      backoff: { type: 'fixed', delay: 150 },
      async handle(n: Notification) {
        const run: Run = { id: n.id, key: n.key, start: performance.now(), end: 0, ok: false };
        runs.push(run);
        active++;
        maxActive = Math.max(maxActive, active);
        try {
          await sleep(Math.random() * 15);
          // Every fourth notification fails its first attempt: it backs off while later ones of
          // its key must wait.
          if (Number(n.id) % 4 === 0 && !failedOnce.has(n.id)) {
            failedOnce.add(n.id);
            throw new Error('transient');
          }
          run.ok = true;
        } finally {
          run.end = performance.now();
          active--;
        }
      },
    });
    const keys = ['a', 'b', 'c', 'd', 'e', 'f'];
    const ids: string[] = [];
    for (let i = 0; i < 120; i++) {
      ids.push(await notify(t.pool, 'o1', { i }, { schema: t.schema, key: keys[i % keys.length] }));
    }
    await waitFor(() => runs.filter((r) => r.ok).length >= ids.length, {
      timeoutMs: 60_000,
      message: 'every notification handled',
    });
    await sleep(300);
    const ok = runs.filter((r) => r.ok).map((r) => r.id);
    expect(new Set(ok).size).toBe(ids.length);
    expect(ok.length).toBe(ids.length);
    expect(failedOnce.size).toBeGreaterThan(20);
    assertSequentialPerKey(runs);
    // Different keys did run side by side.
    expect(maxActive).toBeGreaterThan(1);
  });

  it('blocks a key behind a dead letter, shows it in status, and reconcile --failed releases it', async () => {
    const runs: Run[] = [];
    let poison = true;
    await startWorker({
      id: 'blocking',
      channels: ['o2'],
      ordered: true,
      concurrency: 4,
      attempts: 2,
      backoff: { type: 'fixed', delay: 50 },
      handle(n: Notification) {
        const run: Run = { id: n.id, key: n.key, start: performance.now(), end: 0, ok: false };
        runs.push(run);
        run.end = performance.now();
        if (poison && (n.payload as { poison?: boolean }).poison) {
          throw new PermanentError('poison');
        }
        run.ok = true;
      },
    });
    const opts = (key: string) => ({ schema: t.schema, key });
    const a1 = await notify(t.pool, 'o2', { n: 1 }, opts('A'));
    const a2 = await notify(t.pool, 'o2', { n: 2, poison: true }, opts('A'));
    const a3 = await notify(t.pool, 'o2', { n: 3 }, opts('A'));
    const a4 = await notify(t.pool, 'o2', { n: 4 }, opts('A'));
    const b1 = await notify(t.pool, 'o2', { n: 1 }, opts('B'));
    const b2 = await notify(t.pool, 'o2', { n: 2 }, opts('B'));
    await waitFor(() => [a1, b1, b2].every((id) => runs.some((r) => r.id === id && r.ok)), {
      timeoutMs: 20_000,
      message: 'A1, B1, B2 handled',
    });
    await waitFor(() => runs.some((r) => r.id === a2 && !r.ok), {
      timeoutMs: 20_000,
      message: 'A2 failed',
    });
    await sleep(1500);
    // A3 and A4 wait behind the dead letter; they never started.
    expect(runs.filter((r) => r.id === a3 || r.id === a4)).toEqual([]);
    const report = await status({ settings: apiSettings(t) });
    const blocking = report.consumers.find((c) => c.id === 'blocking');
    expect(blocking?.blockedKeys).toEqual({
      count: 1,
      oldest: expect.objectContaining({ key: 'A', notificationId: a2 }),
    });
    // The board lists it on its blocked-keys page, linked from the header.
    const board = await startBoard({ settings: apiSettings(t), port: 0, host: '127.0.0.1' });
    try {
      const json = (await (await fetch(`${board.url}blocked-keys?format=json`)).json()) as {
        consumers: { id: string; count: number }[];
        heads: { consumerId: string; key: string; notificationId: string }[];
      };
      expect(json.consumers).toContainEqual(expect.objectContaining({ id: 'blocking', count: 1 }));
      expect(json.heads).toContainEqual(
        expect.objectContaining({ consumerId: 'blocking', key: 'A', notificationId: a2 }),
      );
      const html = await (await fetch(`${board.url}blocked-keys`)).text();
      expect(html).toContain(`pgq-bridge consumers skip blocking ${a2}`);
      expect(await (await fetch(board.url)).text()).toContain('/blocked-keys');
    } finally {
      await board.close();
    }
    poison = false;
    const result = await reconcile({
      settings: apiSettings(t),
      failed: true,
      consumers: ['blocking'],
    });
    expect(result.replayed).toBe(1);
    await waitFor(() => [a2, a3, a4].every((id) => runs.some((r) => r.id === id && r.ok)), {
      timeoutMs: 20_000,
      message: 'A2 replayed, then A3 and A4',
    });
    const order = runs.filter((r) => r.ok && r.key === 'A').map((r) => r.id);
    expect(order).toEqual([a1, a2, a3, a4]);
    const after = await status({ settings: apiSettings(t) });
    expect(after.consumers.find((c) => c.id === 'blocking')?.blockedKeys).toEqual({
      count: 0,
      oldest: null,
    });
  });

  it('consumers skip gives up the head of a blocked key and the key moves on at once', async () => {
    const done: string[] = [];
    await startWorker({
      id: 'released',
      channels: ['o4'],
      ordered: true,
      attempts: 1,
      handle(n: Notification) {
        if ((n.payload as { poison?: boolean }).poison) throw new PermanentError('poison');
        done.push(n.id);
      },
    });
    const opts = { schema: t.schema, key: 'R' };
    const r1 = await notify(t.pool, 'o4', {}, opts);
    const r2 = await notify(t.pool, 'o4', { poison: true }, opts);
    const r3 = await notify(t.pool, 'o4', {}, opts);
    const r4 = await notify(t.pool, 'o4', {}, opts);
    await waitFor(
      async () =>
        (await status({ settings: apiSettings(t) })).consumers.find((c) => c.id === 'released')
          ?.blockedKeys?.count === 1,
      { timeoutMs: 20_000, message: 'R blocked' },
    );
    // Let R3 and R4 back off a few times, so that only the promotion can start them quickly.
    await sleep(2500);
    expect(done).toEqual([r1]);
    const skipped = await skipDelivery({
      settings: apiSettings(t),
      consumer: 'released',
      notificationId: r2,
    });
    expect(skipped.changed).toBe(true);
    const releasedAt = performance.now();
    await waitFor(() => done.length >= 3, { timeoutMs: 20_000, message: 'R3 and R4 handled' });
    expect(done).toEqual([r1, r3, r4]);
    // Promoted, not waiting out R3's delay (by then 2 s or more).
    expect(performance.now() - releasedAt).toBeLessThan(1500);
    const { rows } = await t.pool.query<{ status: string }>(
      `SELECT status FROM "${t.schema}".deliveries WHERE consumer_id = 'released' AND notification_id = $1`,
      [r2],
    );
    expect(rows[0].status).toBe('skipped');
  });

  it("with onDeadLetter 'skip' lets the key go on after a dead letter", async () => {
    const done: string[] = [];
    await startWorker({
      id: 'skipping',
      channels: ['o3'],
      ordered: { onDeadLetter: 'skip' },
      attempts: 1,
      handle(n: Notification) {
        if ((n.payload as { poison?: boolean }).poison) throw new PermanentError('poison');
        done.push(n.id);
      },
    });
    const opts = { schema: t.schema, key: 'S' };
    const s1 = await notify(t.pool, 'o3', {}, opts);
    await notify(t.pool, 'o3', { poison: true }, opts);
    const s3 = await notify(t.pool, 'o3', {}, opts);
    await waitFor(() => done.length >= 2, { timeoutMs: 20_000, message: 'S1 and S3 handled' });
    expect(done).toEqual([s1, s3]);
  });

  it('refuses a bad onDeadLetter with a clear error', () => {
    expect(() =>
      createWorker({
        settings: apiSettings(t),
        consumers: [
          {
            id: 'ox',
            channels: ['x'],
            ordered: { onDeadLetter: 'later' as 'skip' },
            handle() {},
          },
        ],
      }),
    ).toThrow(/ordered must be true, false or \{ onDeadLetter: 'block' \| 'skip' \}/);
  });
});
