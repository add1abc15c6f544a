/**
 * The wake-up lease (migration 0005, src/bridge/lease.ts): writers skip NOTIFY while a busy listener
 * holds the lease; an idle listener still wakes on NOTIFY; a skipped wake-up delays a row until
 * the safety poll, never loses it.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createListener, createWorker, migrate, notify, type Listener } from '../../src/index.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
let settings: ReturnType<typeof apiSettings>;
const listeners: Listener[] = [];

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
  settings = apiSettings(t);
  // A subscriber, so bridged rows become jobs (no worker runs: the jobs just wait).
  const worker = createWorker({
    settings,
    consumers: [{ id: 'sink', channels: ['orders'], handle: () => undefined }],
  });
  await worker.start();
  await worker.close();
});
afterAll(async () => {
  for (const l of listeners) await l.stop();
  await t.cleanup();
});

function listener(options: { pollIntervalMs?: number } = {}): Listener {
  const l = createListener({ settings, ...options });
  listeners.push(l);
  return l;
}

/** A LISTEN connection on the wake-up channel that counts NOTIFYs. */
async function wakeCounter(): Promise<{ count: () => number; end: () => Promise<void> }> {
  const client = new pg.Client({ connectionString: t.databaseUrl });
  await client.connect();
  let n = 0;
  client.on('notification', () => n++);
  await client.query(`LISTEN "${t.schema}"`);
  return { count: () => n, end: () => client.end() };
}

async function setLease(until: string): Promise<void> {
  await t.pool.query(`UPDATE "${t.schema}".listener_lease SET awake_until = $1::timestamptz`, [
    until,
  ]);
}

async function unbridged(): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
  );
  return rows[0].n;
}

describe('wake-up lease', () => {
  it('notify() sends NOTIFY only while no lease is live', async () => {
    const wakes = await wakeCounter();
    try {
      await setLease('-infinity');
      await notify(t.pool, 'orders', { i: 1 }, { schema: t.schema });
      await waitFor(() => wakes.count() === 1, { message: 'a NOTIFY without a lease' });
      await setLease('infinity');
      await notify(t.pool, 'orders', { i: 2 }, { schema: t.schema });
      await notify(t.pool, 'orders', { i: 3 }, { schema: t.schema });
      // A NOTIFY reaches listeners before the writer's own query returns; give it a moment.
      await new Promise((r) => setTimeout(r, 200));
      expect(wakes.count()).toBe(1);
    } finally {
      await wakes.end();
      await setLease('-infinity');
      await t.pool.query(`UPDATE "${t.schema}".notifications SET bridged_at = now()`);
    }
  });

  it('an idle listener wakes on NOTIFY, long before its safety poll', async () => {
    const l = listener({ pollIntervalMs: 60_000 });
    await l.start();
    await waitFor(async () => (await unbridged()) === 0, { message: 'the listener sweeping' });
    await new Promise((r) => setTimeout(r, 300));
    const started = Date.now();
    await notify(t.pool, 'orders', { wake: true }, { schema: t.schema });
    await waitFor(async () => (await unbridged()) === 0, {
      timeoutMs: 5000,
      message: 'the row bridged after its wake-up',
    });
    expect(Date.now() - started).toBeLessThan(5000);
    await l.stop();
  });

  it('a busy listener holds the lease, and gives it up when it stops', async () => {
    const l = listener();
    await l.start();
    const writers = new pg.Pool({ connectionString: t.databaseUrl, max: 4 });
    try {
      const until = Date.now() + 1500;
      let leaseSeen = false;
      const probe = (async () => {
        while (Date.now() < until) {
          const { rows } = await t.pool.query<{ live: boolean }>(
            `SELECT awake_until > clock_timestamp() AS live FROM "${t.schema}".listener_lease`,
          );
          leaseSeen ||= rows[0].live;
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      await Promise.all([
        probe,
        ...Array.from({ length: 4 }, async () => {
          while (Date.now() < until)
            await notify(writers, 'orders', { busy: true }, { schema: t.schema });
        }),
      ]);
      expect(leaseSeen).toBe(true);
      await waitFor(async () => (await unbridged()) === 0, { message: 'the stream bridged' });
    } finally {
      await writers.end();
    }
    await l.stop();
    const { rows } = await t.pool.query<{ live: boolean }>(
      `SELECT awake_until > clock_timestamp() AS live FROM "${t.schema}".listener_lease`,
    );
    expect(rows[0].live).toBe(false);
  });

  it('a skipped wake-up delays a row until the safety poll, and never loses it', async () => {
    const l = listener({ pollIntervalMs: 1500 });
    await l.start();
    await waitFor(async () => (await unbridged()) === 0, { message: 'the listener sweeping' });
    // Let the listener fall asleep on NOTIFY, then write as if a live lease had been seen.
    await new Promise((r) => setTimeout(r, 400));
    await setLease('infinity');
    const wakes = await wakeCounter();
    try {
      await notify(t.pool, 'orders', { late: true }, { schema: t.schema });
      await waitFor(async () => (await unbridged()) === 0, {
        timeoutMs: 5000,
        message: 'the row bridged by the safety poll',
      });
      expect(wakes.count()).toBe(0);
    } finally {
      await wakes.end();
      await setLease('-infinity');
      await l.stop();
    }
  });
});
