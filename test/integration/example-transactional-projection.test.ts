/**
 * examples/transactional-projection, run as a user would: its schema.sql, `work` on its consumers
 * directory, orders notified through SQL; the counters per customer match the orders exactly,
 * also after the completed jobs are added again by hand (the ledger, not BullMQ, decides).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { REPO_ROOT, runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { startListen, startWork, stopGracefully } from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';

const EXAMPLE = join(REPO_ROOT, 'examples', 'transactional-projection');
let t: TestEnv;

beforeAll(async () => {
  t = createTestEnv();
  const result = await runCli(['migrate'], { env: t.env });
  expect(result.code, result.stderr).toBe(0);
  await t.pool.query(
    `SET search_path = "${t.schema}"; ${readFileSync(join(EXAMPLE, 'schema.sql'), 'utf8')}`,
  );
});

afterAll(async () => {
  await t.cleanup();
});

describe('the transactional projection example', () => {
  it('keeps a counter per customer exactly in step with the orders', async () => {
    // The example's unqualified table resolves through the session's search_path.
    const url = new URL(t.databaseUrl);
    url.searchParams.set('options', `-c search_path=${t.schema}`);
    const env = { ...t.env, DATABASE_URL: url.toString() };
    const work = await startWork(env, join(EXAMPLE, 'consumers'), 1);
    const listen = await startListen(t.env);
    await t.pool.query(
      `SELECT "${t.schema}".notify('orders', jsonb_build_object(
          'orderId', 'o-' || g, 'customerId', 'c-' || (g % 3), 'totalCents', g * 100))
         FROM generate_series(1, 30) g`,
    );
    const totals = async () =>
      (
        await t.pool.query<{ customer_id: string; orders: number; total_cents: string }>(
          `SELECT customer_id, orders, total_cents::text FROM "${t.schema}".customer_order_totals
            ORDER BY customer_id`,
        )
      ).rows;
    const expected = [
      {
        customer_id: 'c-0',
        orders: 10,
        total_cents: String(100 * (3 + 6 + 9 + 12 + 15 + 18 + 21 + 24 + 27 + 30)),
      },
      {
        customer_id: 'c-1',
        orders: 10,
        total_cents: String(100 * (1 + 4 + 7 + 10 + 13 + 16 + 19 + 22 + 25 + 28)),
      },
      {
        customer_id: 'c-2',
        orders: 10,
        total_cents: String(100 * (2 + 5 + 8 + 11 + 14 + 17 + 20 + 23 + 26 + 29)),
      },
    ];
    await waitFor(async () => JSON.stringify(await totals()) === JSON.stringify(expected), {
      timeoutMs: 30_000,
      message: 'the counters of 30 orders',
    });
    // removeOnComplete: true, so the jobs are gone; added again, they must not count twice.
    const { rows } = await t.pool.query(
      `SELECT id::text AS id, channel, payload::text AS payload, created_at
         FROM "${t.schema}".notifications ORDER BY id`,
    );
    const queue = new Queue('customer-totals', { connection: t.redis, prefix: t.prefix });
    try {
      await queue.addBulk(
        rows.map((r) => ({
          name: 'orders',
          data: {
            id: r.id,
            channel: r.channel,
            payload: r.payload,
            context: null,
            createdAt: r.created_at.toISOString(),
          },
          opts: { jobId: `n${r.id}`, removeOnComplete: true },
        })),
      );
      await waitFor(
        async () =>
          Object.values(await queue.getJobCounts('waiting', 'active', 'delayed')).every(
            (n) => n === 0,
          ),
        { timeoutMs: 20_000, message: 'the re-added jobs finished' },
      );
    } finally {
      await queue.close();
    }
    await sleep(300);
    expect(await totals()).toEqual(expected);
    await stopGracefully(listen);
    await stopGracefully(work);
  }, 90_000);
});
