/**
 * Transactional consumers (`transactional: true`): each attempt runs in a Postgres transaction
 * whose writes through `ctx.db` commit together with the delivery's ledger row, exactly once.
 * A throw, a timeout (statement_timeout), an SQL error the handler swallowed all roll back and
 * retry; a completed delivery added again is not run; a concurrent second run of one delivery
 * waits for the first's transaction, then skips. Single and batch consumers, real servers.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import {
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  type ConsumerDefinition,
  type Listener,
  type PgqWorker,
} from '../../src/index.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let s: string;
let listener: Listener | undefined;
let worker: PgqWorker | undefined;

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  await migrate({ db: t.pool, schema: t.schema });
  await t.pool.query(
    `CREATE TABLE ${s}.effects (consumer text, notification_id bigint, attempt int,
                                PRIMARY KEY (consumer, notification_id, attempt))`,
  );
});

afterEach(async () => {
  await listener?.stop();
  await worker?.close();
  listener = undefined;
  worker = undefined;
});

afterAll(async () => {
  await t.cleanup();
});

async function start(consumers: ConsumerDefinition[]): Promise<void> {
  worker = createWorker({ settings: apiSettings(t), consumers, shutdownTimeoutMs: 5000 });
  await worker.start();
  listener = createListener({ settings: apiSettings(t) });
  await listener.start();
}

async function send(channel: string, count: number): Promise<string[]> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT ${s}.notify($1, jsonb_build_object('i', g))::text AS id FROM generate_series(1, $2) g`,
    [channel, count],
  );
  return rows.map((r) => r.id);
}

async function effects(consumer: string): Promise<{ id: string; attempt: number }[]> {
  const { rows } = await t.pool.query<{ id: string; attempt: number }>(
    `SELECT notification_id::text AS id, attempt FROM ${s}.effects WHERE consumer = $1
      ORDER BY notification_id`,
    [consumer],
  );
  return rows;
}

async function ledger(consumer: string): Promise<Record<string, string>> {
  const { rows } = await t.pool.query<{ id: string; status: string }>(
    `SELECT notification_id::text AS id, status FROM ${s}.deliveries WHERE consumer_id = $1`,
    [consumer],
  );
  return Object.fromEntries(rows.map((r) => [r.id, r.status]));
}

const insertEffect = `INSERT INTO effects (consumer, notification_id, attempt) VALUES ($1, $2, $3)`;

describe('a transactional consumer', () => {
  it('commits its writes and the ledger row together; a throw rolls both back', async () => {
    const runs = new Map<string, number>();
    await start([
      defineConsumer({
        id: 'tx',
        channels: ['tx'],
        transactional: true,
        backoff: 10,
        async handle(n, _job, { db }) {
          runs.set(n.id, (runs.get(n.id) ?? 0) + 1);
          await db.query(`SET LOCAL search_path = ${s}`);
          await db.query(insertEffect, ['tx', n.id, n.attempt]);
          // Inside the transaction the ledger row is already written (and locked).
          const { rows } = await db.query(
            `SELECT status FROM deliveries WHERE consumer_id = 'tx' AND notification_id = $1`,
            [n.id],
          );
          if (rows[0]?.status !== 'completed') throw new Error('ledger row not in the transaction');
          if ((n.payload as { i: number }).i % 2 === 0 && n.attempt < 3) throw new Error('flaky');
        },
      }),
    ]);
    const ids = await send('tx', 10);
    await waitFor(async () => Object.keys(await ledger('tx')).length === 10, { timeoutMs: 20_000 });
    const rows = await effects('tx');
    // Exactly one committed effect per notification: odd ones at attempt 1, even ones at 3.
    expect(rows.map((r) => r.id)).toEqual(ids);
    expect(rows.map((r) => r.attempt)).toEqual(ids.map((_, i) => (i % 2 === 1 ? 3 : 1)));
    expect(Object.values(await ledger('tx')).every((v) => v === 'completed')).toBe(true);
    expect([...runs.values()].reduce((a, b) => a + b, 0)).toBe(5 + 5 * 3);
  });

  it('does not run a completed delivery added again, and a second run waits, then skips', async () => {
    const started: string[] = [];
    await start([
      defineConsumer({
        id: 'dup',
        channels: ['dup'],
        transactional: true,
        concurrency: 4,
        removeOnComplete: true,
        async handle(n, _job, { db }) {
          started.push(n.id);
          await db.query(insertEffect.replace('effects', `${s}.effects`), ['dup', n.id, 1]);
          await sleep(300);
        },
      }),
    ]);
    const [first] = await send('dup', 1);
    await waitFor(async () => (await ledger('dup'))[first] === 'completed', { timeoutMs: 10_000 });
    const queue = new Queue('dup', { connection: t.redis, prefix: t.prefix });
    let second = '';
    try {
      // The finished job is gone (removeOnComplete): the same id makes a new job; not run.
      const { rows } = await t.pool.query(
        `SELECT id::text, channel, payload::text AS payload, NULL AS context, created_at
           FROM ${s}.notifications WHERE id = $1`,
        [first],
      );
      const data = { ...rows[0], createdAt: rows[0].created_at.toISOString() };
      await queue.add('dup', data, { jobId: `n${first}`, removeOnComplete: true });
      // A new notification delivered twice at once (two job ids, one delivery): one waits.
      [second] = await send('dup', 1);
      const { rows: r2 } = await t.pool.query(
        `SELECT id::text, channel, payload::text AS payload, NULL AS context, created_at
           FROM ${s}.notifications WHERE id = $1`,
        [second],
      );
      const data2 = { ...r2[0], createdAt: r2[0].created_at.toISOString() };
      // Added while the first run sleeps in its transaction: the twin's claim must wait for it.
      await waitFor(() => started.includes(second), { timeoutMs: 10_000 });
      await queue.add('dup', data2, { jobId: `twin${second}`, removeOnComplete: true });
      await waitFor(async () => (await ledger('dup'))[second] === 'completed', {
        timeoutMs: 10_000,
      });
      await waitFor(
        async () =>
          Object.values(await queue.getJobCounts('waiting', 'active', 'delayed')).every(
            (n) => n === 0,
          ),
        { timeoutMs: 10_000 },
      );
    } finally {
      await queue.close();
    }
    expect((await effects('dup')).map((r) => r.id)).toEqual([first, second]);
    expect(started.filter((id) => id === first)).toHaveLength(1);
    expect(started.filter((id) => id === second)).toHaveLength(1);
  });

  it('rolls back on timeout (statement_timeout) and on an SQL error the handler swallowed', async () => {
    const attempts: string[] = [];
    await start([
      defineConsumer({
        id: 'slowtx',
        channels: ['slowtx'],
        transactional: true,
        timeout: 300,
        backoff: 10,
        attempts: 3,
        async handle(n, _job, { db, signal }) {
          attempts.push(`${n.id}:${n.attempt}`);
          await db.query(insertEffect.replace('effects', `${s}.effects`), [
            'slowtx',
            n.id,
            n.attempt,
          ]);
          if (n.attempt === 1) {
            // Cancelled by the transaction's statement_timeout (the consumer's timeout).
            await db.query('SELECT pg_sleep(2)');
          } else if (n.attempt === 2) {
            // The handler catches the error: its transaction is aborted all the same.
            await db.query('SELECT 1/0').catch(() => undefined);
          }
          if (signal.aborted) throw new Error('aborted');
        },
      }),
    ]);
    const [id] = await send('slowtx', 1);
    await waitFor(async () => (await ledger('slowtx'))[id] === 'completed', { timeoutMs: 20_000 });
    expect(attempts).toEqual([`${id}:1`, `${id}:2`, `${id}:3`]);
    expect(await effects('slowtx')).toEqual([{ id, attempt: 3 }]);
  });

  it('batch: one transaction per call, completed notifications left out', async () => {
    const calls: string[][] = [];
    await start([
      defineConsumer({
        id: 'txb',
        channels: ['txb'],
        transactional: true,
        batch: { size: 5, maxWaitMs: 0 },
        backoff: 10,
        async handleBatch(ns, _job, { db }) {
          calls.push(ns.map((n) => n.id));
          for (const n of ns) {
            await db.query(insertEffect.replace('effects', `${s}.effects`), [
              'txb',
              n.id,
              n.attempt,
            ]);
          }
          if (calls.length === 1) throw new Error('first call fails: nothing of it may commit');
        },
      }),
    ]);
    // Two of the ten already completed per the ledger (as if handled before a re-pack).
    const ids = await send('txb', 10);
    await t.pool.query(
      `INSERT INTO ${s}.deliveries (consumer_id, notification_id, status, attempts)
       VALUES ('txb', $1, 'completed', 1), ('txb', $2, 'completed', 1)`,
      [ids[1], ids[6]],
    );
    await waitFor(async () => Object.keys(await ledger('txb')).length === 10, {
      timeoutMs: 20_000,
    });
    await sleep(200);
    const committed = (await effects('txb')).map((r) => r.id);
    expect(committed).toEqual(ids.filter((_, i) => i !== 1 && i !== 6));
    expect(calls.flat()).not.toContain(ids[1]);
    expect(calls.flat()).not.toContain(ids[6]);
  });
});
