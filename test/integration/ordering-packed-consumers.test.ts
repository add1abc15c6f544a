/**
 * Ordered packed consumers (`ordered` + `batch` + plain `handle`): within a pack, a key's
 * notifications run one after another in id order, keys side by side; across packs a key waits
 * for its earlier notifications; a failure of key K holds K's later notifications of the pack
 * back, and they leave the pack after it, in order; a dead letter blocks its key until
 * `reconcile --failed` replays it. createWorker/createListener against real Postgres and Redis.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  PermanentError,
  reconcile,
  type ConsumerDefinition,
  type Listener,
  type Notification,
  type PgqWorker,
} from '../../src/index.js';
import { apiSettings, createTestEnv, randomId, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
const running: (Listener | PgqWorker)[] = [];

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});
afterEach(async () => {
  for (const r of running.splice(0).reverse()) {
    if ('stop' in r) await r.stop();
    else await r.close();
  }
});
afterAll(async () => {
  await t.cleanup();
});

type Payload = { i: number };

async function start(consumer: ConsumerDefinition): Promise<void> {
  const worker = createWorker({ settings: apiSettings(t), consumers: [consumer] });
  running.push(worker);
  await worker.start();
  const listener = createListener({ settings: apiSettings(t) });
  running.push(listener);
  await listener.start();
}

/** `count` notifications on `channel` in one statement, key `k<i % keys>`; ids by key. */
async function backlog(
  channel: string,
  count: number,
  keys: number,
): Promise<Map<string, string[]>> {
  const { rows } = await t.pool.query<{ id: string; key: string }>(
    `SELECT "${t.schema}".notify($1, jsonb_build_object('i', i), 'k' || (i % $3))::text AS id,
            'k' || (i % $3) AS key
       FROM generate_series(1, $2::int) AS i`,
    [channel, count, keys],
  );
  const byKey = new Map<string, string[]>();
  for (const r of rows) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r.id]);
  return byKey;
}

/** Records runs per key: order of completions, and whether two runs of a key overlapped. */
function recorder() {
  const order = new Map<string, string[]>();
  const active = new Map<string, number>();
  let overlaps = 0;
  let mostAtOnce = 0;
  let now = 0;
  return {
    order,
    overlaps: () => overlaps,
    mostAtOnce: () => mostAtOnce,
    async run(n: Notification<Payload>, ms: number, fail?: () => void): Promise<void> {
      const key = n.key ?? '-';
      if ((active.get(key) ?? 0) > 0) overlaps++;
      active.set(key, (active.get(key) ?? 0) + 1);
      now++;
      mostAtOnce = Math.max(mostAtOnce, now);
      try {
        await sleep(ms);
        fail?.();
        order.set(key, [...(order.get(key) ?? []), n.id]);
      } finally {
        active.set(key, (active.get(key) ?? 1) - 1);
        now--;
      }
    },
  };
}

describe('ordered packed consumers', () => {
  it('run a key one at a time in id order within and across packs, keys side by side', async () => {
    const channel = `c${randomId()}`;
    const rec = recorder();
    const ids = await backlog(channel, 300, 10);
    await start(
      defineConsumer<Payload>({
        id: `o${randomId()}`,
        channels: [channel],
        ordered: true,
        concurrency: 8,
        startFrom: 'beginning',
        batch: { size: 50, maxWaitMs: 20 },
        handle: (n) => rec.run(n, 2),
      }),
    );
    await waitFor(() => [...rec.order.values()].reduce((a, l) => a + l.length, 0) === 300, {
      timeoutMs: 60_000,
      message: '300 handled',
    });
    expect(rec.overlaps()).toBe(0);
    expect(rec.mostAtOnce()).toBeGreaterThan(1);
    for (const [key, list] of ids) expect(rec.order.get(key), key).toEqual(list);
  });

  it('hold back the later notifications of a failing key, which then run after it, in order', async () => {
    const channel = `c${randomId()}`;
    const rec = recorder();
    const ids = await backlog(channel, 40, 2);
    const a3 = ids.get('k1')![2];
    const attempts: number[] = [];
    await start(
      defineConsumer<Payload>({
        id: `o${randomId()}`,
        channels: [channel],
        ordered: true,
        concurrency: 4,
        attempts: 3,
        // Long enough for k0 to finish first on a loaded machine.
        backoff: 3000,
        startFrom: 'beginning',
        batch: { size: 50, maxWaitMs: 0 },
        handle: (n) =>
          rec.run(n, 1, () => {
            if (n.id !== a3) return;
            attempts.push(n.attempt);
            if (n.attempt === 1) throw new Error('first try fails');
          }),
      }),
    );
    // The other key goes on while k1 waits for its notification's retry.
    await waitFor(() => rec.order.get('k0')?.length === 20, { message: 'k0 done' });
    expect(rec.order.get('k1')).toEqual(ids.get('k1')!.slice(0, 2));
    await waitFor(() => rec.order.get('k1')?.length === 20, {
      timeoutMs: 20_000,
      message: 'k1 done after the retry',
    });
    expect(attempts).toEqual([1, 2]);
    expect(rec.order.get('k1')).toEqual(ids.get('k1'));
    expect(rec.order.get('k0')).toEqual(ids.get('k0'));
    expect(rec.overlaps()).toBe(0);
  });

  it('block a key behind a dead letter until reconcile --failed replays it', async () => {
    const channel = `c${randomId()}`;
    const id = `o${randomId()}`;
    const rec = recorder();
    const ids = await backlog(channel, 20, 2);
    const bad = ids.get('k1')![1];
    let fixed = false;
    await start(
      defineConsumer<Payload>({
        id,
        channels: [channel],
        ordered: true,
        concurrency: 4,
        startFrom: 'beginning',
        batch: { size: 50, maxWaitMs: 0 },
        handle: (n) =>
          rec.run(n, 1, () => {
            if (n.id === bad && !fixed) throw new PermanentError('not yet');
          }),
      }),
    );
    await waitFor(() => rec.order.get('k0')?.length === 10, { message: 'k0 done' });
    await sleep(1000);
    expect(rec.order.get('k1')).toEqual(ids.get('k1')!.slice(0, 1));
    fixed = true;
    const result = await reconcile({ settings: apiSettings(t), failed: true, consumers: [id] });
    expect(result.replayed).toBe(1);
    await waitFor(() => rec.order.get('k1')?.length === 10, {
      timeoutMs: 30_000,
      message: 'k1 done after the replay',
    });
    expect(rec.order.get('k1')).toEqual(ids.get('k1'));
    expect(rec.overlaps()).toBe(0);
  });
});
