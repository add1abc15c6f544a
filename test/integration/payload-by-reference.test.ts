/**
 * Payloads over `--inline-payload-limit` (default 64 KiB) travel by reference: the bridge puts
 * the notification id and a marker in each consumer's job instead of a copy of the payload, and
 * the worker reads the payload from the row before the handler runs (one query per job, for every
 * reference a batch job holds). The handler sees the same Notification; the job hash stays
 * small; the setting works from the CLI (reconcile here); a reference whose row is gone fails
 * the job for good with a message that says so.
 */
import { Job, Queue } from 'bullmq';
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  notify,
  withContext,
  type ConsumerDefinition,
  type Listener,
  type Notification,
  type PgqWorker,
} from '../../src/index.js';
import { withPayloads } from '../../src/consume/payload-refs.js';
import type { NotificationJobData } from '../../src/consume/notification.js';
import { runCli } from '../support/cli.js';
import { apiSettings, createTestEnv, randomId, type TestEnv } from '../support/env.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
let opts: { schema: string };
const running: (Listener | PgqWorker)[] = [];

beforeAll(async () => {
  t = createTestEnv();
  opts = { schema: t.schema };
  await migrate({ db: t.pool, schema: t.schema });
});
afterEach(async () => {
  for (const r of running.splice(0)) {
    if ('close' in r) await r.close();
    else await r.stop();
  }
});
afterAll(async () => {
  await t.cleanup();
});

async function startWorker(...consumers: ConsumerDefinition[]): Promise<void> {
  const worker = createWorker({ settings: apiSettings(t), consumers });
  running.push(worker);
  await worker.start();
}

async function startListener(): Promise<void> {
  const listener = createListener({ settings: apiSettings(t) });
  running.push(listener);
  await listener.start();
}

/** A payload of about `bytes` bytes, with multi-byte text and nesting, so a copy shows. */
function bigPayload(seed: number, bytes: number): Record<string, unknown> {
  const unit = `row ${seed} é✓ ${'x'.repeat(50)} `;
  return {
    seed,
    nested: { list: [1, 'two', { three: 3 }], flag: true, nothing: null },
    text: unit.repeat(Math.ceil(bytes / Buffer.byteLength(unit))),
  };
}

/** The job hash of a notification's job: its `data` field's length and the hash's memory. */
async function jobHash(consumer: string, jobId: string): Promise<{ data: string; bytes: number }> {
  const key = `${t.prefix}:${consumer}:${jobId}`;
  const data = (await t.redis.hget(key, 'data')) ?? '';
  const bytes = Number(await t.redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0'));
  return { data, bytes };
}

describe('payloads by reference', () => {
  it('bring a 1 MB payload to plain and batch handlers intact, with small jobs', async () => {
    const channel = `big${randomId()}`;
    const seen = {
      single: new Map<string, Notification>(),
      batch: new Map<string, Notification>(),
    };
    const batchCalls: number[] = [];
    await startWorker(
      defineConsumer({
        id: `one-${randomId()}`,
        channels: [channel],
        handle: (n) => void seen.single.set(n.id, n),
      }),
      defineConsumer({
        id: `many-${randomId()}`,
        channels: [channel],
        batch: { size: 10, maxWaitMs: 200 },
        handleBatch: (ns) => {
          batchCalls.push(ns.length);
          for (const n of ns) seen.batch.set(n.id, n);
        },
      }),
    );
    const payloads = [1, 2, 3].map((i) => bigPayload(i, 1024 * 1024));
    const small = { tiny: true };
    // Stored before the listener starts, so the batch consumer's job holds all four.
    const ids = await withContext(t.pool, { user: 'u1' }, async (client) => {
      const out: string[] = [];
      for (const p of [...payloads, small]) out.push(await notify(client, channel, p, opts));
      return out;
    });
    await startListener();
    await waitFor(() => seen.single.size === 4 && seen.batch.size === 4, {
      timeoutMs: 30_000,
      message: 'every notification handled by both consumers',
    });
    const { rows } = await t.pool.query<{ id: string; created_at: Date }>(
      `SELECT id::text, created_at FROM "${t.schema}".notifications ORDER BY id`,
    );
    const expected = [...payloads, small];
    for (const [i, id] of ids.entries()) {
      for (const n of [seen.single.get(id), seen.batch.get(id)]) {
        expect(n?.payload).toEqual(expected[i]);
        expect(n?.channel).toBe(channel);
        expect(n?.context).toEqual({ user: 'u1' });
        expect(n?.createdAt.getTime()).toBe(rows.find((r) => r.id === id)?.created_at.getTime());
        expect(n?.isReplay).toBe(false);
        expect(n?.change).toBeUndefined();
      }
    }
    // One batch call with all four: the three references read in one query.
    expect(batchCalls).toEqual([4]);

    const consumerIds = running
      .filter((r): r is PgqWorker => 'workers' in r)
      .flatMap((w) => [...w.workers.keys()]);
    const one = consumerIds.find((c) => c.startsWith('one-')) as string;
    for (const id of ids.slice(0, 3)) {
      const hash = await jobHash(one, `n${id}`);
      expect(JSON.parse(hash.data)).toMatchObject({ id, payloadRef: true });
      expect(hash.data).not.toContain('payload"');
      expect(hash.data.length).toBeLessThan(300);
      expect(hash.bytes).toBeLessThan(2048);
    }
    // The small one stays inline, as before.
    const inline = JSON.parse((await jobHash(one, `n${ids[3]}`)).data) as NotificationJobData;
    expect(inline.payloadRef).toBeUndefined();
    expect(JSON.parse(inline.payload as string)).toEqual(small);
  }, 60_000);

  it('reads every reference of a job in one query', async () => {
    const channel = `q${randomId()}`;
    const ids = await Promise.all([1, 2, 3].map((i) => notify(t.pool, channel, { i }, opts)));
    let queries = 0;
    const counting = {
      query: (...args: Parameters<pg.Pool['query']>) => {
        queries++;
        return (t.pool.query as (...a: unknown[]) => unknown)(...args);
      },
    } as unknown as pg.Pool;
    const entry = (id: string, ref: boolean): NotificationJobData => ({
      id,
      channel,
      context: null,
      createdAt: new Date().toISOString(),
      ...(ref ? { payloadRef: true as const } : { payload: '{"inline":1}' }),
    });
    const entries = [entry(ids[0], true), entry(ids[1], false), entry(ids[2], true)];
    const loaded = await withPayloads(counting, t.schema, entries);
    expect(queries).toBe(1);
    expect(loaded.map((e) => JSON.parse(e.payload as string))).toEqual([
      { i: 1 },
      { inline: 1 },
      { i: 3 },
    ]);
    // The input keeps its references (a batch split re-adds them, not the payloads).
    expect(entries[0].payload).toBeUndefined();
    await withPayloads(counting, t.schema, [entry(ids[1], false)]);
    expect(queries).toBe(1);
  });

  it('follows --inline-payload-limit, and fails a reference whose row is gone for good', async () => {
    const channel = `r${randomId()}`;
    const consumer = `ref-${randomId()}`;
    const got = new Map<string, unknown>();
    const definition = defineConsumer({
      id: consumer,
      channels: [channel],
      attempts: 3,
      handle: (n) => void got.set(n.id, n.payload),
    });
    // Registered, then stopped: reconcile bridges the rows with no worker running.
    await startWorker(definition);
    for (const r of running.splice(0)) if ('close' in r) await r.close();
    const payload = { text: 'z'.repeat(2000) };
    const [kept, doomed] = await Promise.all(
      [1, 2].map(() => notify(t.pool, channel, payload, opts)),
    );
    const small = await notify(t.pool, channel, { small: 1 }, opts);
    const result = await runCli(['reconcile', '--inline-payload-limit', '1KiB'], { env: t.env });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/enqueued 3\b/);
    expect(JSON.parse((await jobHash(consumer, `n${kept}`)).data)).toMatchObject({
      payloadRef: true,
      replay: true,
    });
    expect(JSON.parse((await jobHash(consumer, `n${small}`)).data).payload).toBe('{"small": 1}');

    await t.pool.query(`DELETE FROM "${t.schema}".notifications WHERE id = $1`, [doomed]);
    await startWorker(definition);
    await waitFor(() => got.size === 2, { timeoutMs: 20_000, message: 'the two rows handled' });
    expect(got.get(kept)).toEqual(payload);
    const queue = new Queue(consumer, { connection: t.redis, prefix: t.prefix });
    try {
      await waitFor(async () => (await queue.getJobState(`n${doomed}`)) === 'failed', {
        timeoutMs: 20_000,
        message: 'the job of the deleted row failed',
      });
      const job = await Job.fromId(queue, `n${doomed}`);
      expect(job?.failedReason).toMatch(/by reference and its row is gone/);
      expect(job?.attemptsMade).toBe(1);
    } finally {
      await queue.close();
    }
    expect(got.has(doomed)).toBe(false);
  }, 60_000);
});
