/**
 * A consumer with a large `concurrency` runs on several BullMQ Workers in one process
 * (src/consume/fetchers.ts, fetchersFor): together they must still run each notification once, never more
 * handlers at once than `concurrency`, and drain on close like a single Worker.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  migrate,
  type Listener,
  type PgqWorker,
} from '../../src/index.js';
import { fetchersFor, splitEvenly } from '../../src/consume/fetchers.js';
import { fetchSlotsFor } from '../../src/consume/slots.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let listener: Listener | undefined;
let worker: PgqWorker | undefined;

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});
afterAll(async () => {
  await listener?.stop();
  await worker?.close();
  await t.cleanup();
});

describe('fetchersFor / splitEvenly', () => {
  it('one Worker per 10 slots, at most 4, shares that add up to the concurrency', () => {
    expect([1, 9, 10, 19, 20, 39, 40, 50, 500].map(fetchersFor)).toEqual([
      1, 1, 1, 1, 2, 3, 4, 4, 4,
    ]);
    expect(splitEvenly(50, 4)).toEqual([13, 13, 12, 12]);
    expect(splitEvenly(20, 2)).toEqual([10, 10]);
    expect(splitEvenly(7, 1)).toEqual([7]);
  });
});

describe('a consumer split over several Workers', () => {
  it('runs each of 1,500 notifications once, at most `concurrency` at a time, and drains on close', async () => {
    const settings = apiSettings(t);
    const CONCURRENCY = 40;
    const runs = new Map<string, number>();
    let active = 0;
    let peak = 0;
    worker = createWorker({
      settings,
      consumers: [
        {
          id: 'wide',
          channels: ['orders'],
          concurrency: CONCURRENCY,
          async handle(n) {
            active++;
            peak = Math.max(peak, active);
            runs.set(n.id, (runs.get(n.id) ?? 0) + 1);
            // Long enough that the whole concurrency fills up; slow ones for the close below.
            await sleep((n.payload as { slow?: boolean }).slow ? 300 : 20);
            active--;
          },
        },
      ],
    });
    await worker.start();
    expect(fetchersFor(CONCURRENCY)).toBe(4);
    // BullMQ holds twice the concurrency (src/consume/slots.ts): 80 jobs over 4 Workers; the
    // handlers themselves stay at 40 (peak below).
    expect(fetchersFor(fetchSlotsFor(CONCURRENCY))).toBe(4);
    expect(worker.workers.get('wide')?.concurrency).toBe(20);

    await t.pool.query(
      `SELECT "${t.schema}".notify('orders', jsonb_build_object('i', g)) FROM generate_series(1, 1500) g`,
    );
    listener = createListener({ settings });
    await listener.start();
    await waitFor(() => runs.size === 1500, { timeoutMs: 60_000 });

    expect([...runs.values()].every((n) => n === 1)).toBe(true);
    expect(peak).toBeLessThanOrEqual(CONCURRENCY);
    // All four Workers took part: one alone could not have run more than its share (10).
    expect(peak).toBeGreaterThan(10);

    // A graceful close with handlers in flight closes every Worker and loses no outcome.
    await t.pool.query(
      `SELECT "${t.schema}".notify('orders', jsonb_build_object('i', g, 'slow', true)) FROM generate_series(1, 200) g`,
    );
    await waitFor(() => active > 10, { timeoutMs: 10_000, intervalMs: 10 });
    await worker.close();
    worker = undefined;
    expect(active).toBe(0);
    const { rows } = await t.pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM "${t.schema}".deliveries WHERE consumer_id = 'wide' AND status = 'completed'`,
    );
    // Every handler that ran has its outcome in the ledger.
    expect(Number(rows[0].n)).toBe(runs.size);
    expect([...runs.values()].every((n) => n === 1)).toBe(true);
  });
});
