/**
 * Issue 2: a rolled-back notify is never delivered; a 1 MB payload is delivered intact; a handler
 * that throws is retried with backoff; PermanentError fails at once; after `attempts` the job
 * stays failed in BullMQ and the ledger says failed.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { notify } from '../../src/index.js';
import type { CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let listen: CliHandle;
let work: CliHandle;

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  const dir = writeConsumers({
    'consumers.mjs': `${RECORDER}
export default [
  defineConsumer({ id: 'rec', channels: ['orders'],
    async handle(n) {
      await record('rec', n, n.payload.blob === undefined ? null
        : sha256(n.payload.blob) + ':' + n.payload.blob.length + ':' + n.payload.tail);
    } }),
  defineConsumer({ id: 'flaky', channels: ['jobs'], attempts: 4,
    backoff: { type: 'fixed', delay: 400 },
    async handle(n) {
      await record('flaky', n);
      if (n.attempt < 3) throw new Error('flaky failure ' + n.attempt);
    } }),
  defineConsumer({ id: 'permanent', channels: ['jobs'], attempts: 5,
    backoff: { type: 'fixed', delay: 100 },
    async handle(n) {
      await record('permanent', n);
      throw new PermanentError('bad payload, do not retry');
    } }),
  defineConsumer({ id: 'doomed', channels: ['jobs'], attempts: 2,
    backoff: { type: 'fixed', delay: 100 },
    async handle(n) {
      await record('doomed', n);
      throw new Error('always fails');
    } }),
];`,
  });
  work = await startWork(t.env, dir, 4);
  listen = await startListen(t.env);
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

/** The handled rows of one consumer, in order. */
async function runsOf(consumer: string) {
  const { rows } = await t.pool.query<{
    notification_id: string;
    attempt: number;
    info: string | null;
    at: Date;
  }>(
    `SELECT notification_id::text, attempt, info, at FROM "${t.schema}".handled
      WHERE consumer = $1 ORDER BY seq`,
    [consumer],
  );
  return rows;
}

async function ledger(consumer: string, id: string) {
  const { rows } = await t.pool.query(
    `SELECT status, attempts, last_error FROM "${t.schema}".deliveries
      WHERE consumer_id = $1 AND notification_id = $2`,
    [consumer, id],
  );
  return rows[0] as { status: string; attempts: number; last_error: string | null } | undefined;
}

describe('delivery', () => {
  it('never delivers a rolled-back notify, and delivers a 1 MB payload intact', async () => {
    const client = new pg.Client({ connectionString: t.databaseUrl });
    await client.connect();
    let rolledBack: string;
    try {
      await client.query('BEGIN');
      rolledBack = await notify(client, 'orders', { rolled: 'back' }, { schema: t.schema });
      await client.query('ROLLBACK');
    } finally {
      await client.end();
    }
    // ~1 MB of incompressible text, plus non-ASCII to catch encoding damage.
    const blob = randomBytes(768 * 1024).toString('base64') + 'é€😀';
    expect(Buffer.byteLength(blob)).toBeGreaterThan(1024 * 1024);
    const big = await notify(t.pool, 'orders', { blob, tail: 'end' }, { schema: t.schema });
    const after = await notify(t.pool, 'orders', { after: true }, { schema: t.schema });
    expect(BigInt(after)).toBeGreaterThan(BigInt(big));

    await waitFor(async () => (await runsOf('rec')).length >= 2, {
      timeoutMs: 20_000,
      message: 'both committed notifications handled',
    });
    await sleep(300);
    const runs = await runsOf('rec');
    expect(runs.map((r) => r.notification_id).sort()).toEqual([big, after].sort());
    const hash = createHash('sha256').update(blob).digest('hex');
    expect(runs.find((r) => r.notification_id === big)!.info).toBe(`${hash}:${blob.length}:end`);
    const { rows } = await t.pool.query(
      `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE id = $1`,
      [rolledBack],
    );
    expect(rows[0].n).toBe(0);
    expect(await ledger('rec', rolledBack)).toBeUndefined();
  });

  it('retries with backoff, fails PermanentError at once, and keeps exhausted jobs failed', async () => {
    const id = await notify(t.pool, 'jobs', { task: 1 }, { schema: t.schema });
    await waitFor(
      async () =>
        (await ledger('flaky', id))?.status === 'completed' &&
        (await ledger('doomed', id))?.status === 'failed' &&
        (await ledger('permanent', id))?.status === 'failed',
      { timeoutMs: 20_000, message: 'all three outcomes in the ledger' },
    );
    // Time for any (wrong) further attempt to show up.
    await sleep(1000);

    // A handler that throws is retried, with the backoff between attempts, until it succeeds.
    const flaky = await runsOf('flaky');
    expect(flaky.map((r) => r.attempt)).toEqual([1, 2, 3]);
    for (let i = 1; i < flaky.length; i++) {
      expect(flaky[i].at.getTime() - flaky[i - 1].at.getTime()).toBeGreaterThanOrEqual(350);
    }
    expect(await ledger('flaky', id)).toEqual({
      status: 'completed',
      attempts: 3,
      last_error: null,
    });

    // PermanentError: one attempt, failed at once.
    expect((await runsOf('permanent')).map((r) => r.attempt)).toEqual([1]);
    expect(await ledger('permanent', id)).toEqual({
      status: 'failed',
      attempts: 1,
      last_error: 'bad payload, do not retry',
    });

    // attempts exhausted: failed in the ledger and kept as failed in BullMQ.
    expect((await runsOf('doomed')).map((r) => r.attempt)).toEqual([1, 2]);
    expect(await ledger('doomed', id)).toEqual({
      status: 'failed',
      attempts: 2,
      last_error: 'always fails',
    });
    for (const [consumer, attemptsMade, reason] of [
      ['doomed', 2, 'always fails'],
      ['permanent', 1, 'bad payload, do not retry'],
    ] as const) {
      const queue = new Queue(consumer, { connection: t.redis, prefix: t.prefix });
      try {
        const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'failed');
        expect(counts).toEqual({ waiting: 0, active: 0, delayed: 0, failed: 1 });
        const [failed] = await queue.getFailed();
        expect(failed.id).toBe(`n${id}`);
        expect(failed.attemptsMade).toBe(attemptsMade);
        expect(failed.failedReason).toBe(reason);
        expect(failed.data).toMatchObject({ id, channel: 'jobs', payload: '{"task": 1}' });
      } finally {
        await queue.close();
      }
    }
  });

  it('stops listen and work cleanly afterwards', async () => {
    await stopGracefully(listen, 'SIGINT');
    await stopGracefully(work, 'SIGINT');
  });
});
