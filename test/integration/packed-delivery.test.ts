/**
 * Packed delivery (`batch: { size, maxWaitMs }` with a plain `handle`): notifications travel up to
 * `size` per BullMQ job while `handle` runs once per notification, up to `concurrency` at once,
 * each with its own attempts, backoff, PermanentError, ledger row and dead letter. A failing
 * notification leaves its pack as a job of its own (`n<id>`); the others are not run again.
 * createWorker/createListener against real Postgres and Redis; the board's API shows a pack.
 */
import type { Server } from 'node:http';
import express from 'express';
import type { Queue } from 'bullmq';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  createBoardRouter,
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  PermanentError,
  reconcile,
  type ConsumerDefinition,
  type Listener,
  type PgqWorker,
} from '../../src/index.js';
import { openConsumerQueue } from '../../src/queue-layout.js';
import { batchJobIdFor } from '../../src/bridge/pack.js';
import { apiSettings, createTestEnv, randomId, type TestEnv } from '../support/env.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
const running: (Listener | PgqWorker | Queue)[] = [];

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

function queueOf(id: string): Queue {
  const queue = openConsumerQueue(t.redis, apiSettings(t), id);
  running.push(queue);
  return queue;
}

/** Stores `count` notifications on `channel` in one statement (a backlog); returns their ids. */
async function backlog(channel: string, count: number): Promise<string[]> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT "${t.schema}".notify($1, jsonb_build_object('i', i))::text AS id
       FROM generate_series(1, $2::int) AS i`,
    [channel, count],
  );
  return rows.map((r) => r.id);
}

async function ledgerOf(
  consumer: string,
  id: string,
): Promise<{ status: string; attempts: number }> {
  const { rows } = await t.pool.query<{ status: string; attempts: number }>(
    `SELECT status, attempts FROM "${t.schema}".deliveries
      WHERE consumer_id = $1 AND notification_id = $2`,
    [consumer, id],
  );
  return rows[0];
}

describe('packed delivery', () => {
  it('handles each notification once, up to concurrency at once, in fewer jobs than notifications', async () => {
    const channel = `c${randomId()}`;
    const id = `p${randomId()}`;
    const seen = new Map<string, number>();
    let active = 0;
    let most = 0;
    await backlog(channel, 500);
    await start(
      defineConsumer<Payload>({
        id,
        channels: [channel],
        concurrency: 10,
        startFrom: 'beginning',
        batch: { size: 50, maxWaitMs: 20 },
        async handle(n) {
          active++;
          most = Math.max(most, active);
          await new Promise((resolve) => setTimeout(resolve, 2));
          seen.set(n.id, (seen.get(n.id) ?? 0) + 1);
          active--;
        },
      }),
    );
    await waitFor(() => seen.size === 500, { timeoutMs: 30_000, message: '500 handled' });
    expect([...seen.values()].every((n) => n === 1)).toBe(true);
    expect(most).toBeLessThanOrEqual(10);
    expect(most).toBeGreaterThan(1);
    const queue = queueOf(id);
    await waitFor(async () => (await queue.getJobCounts('completed')).completed > 0);
    const jobs = await queue.getJobCounts('completed', 'active', 'waiting', 'delayed', 'failed');
    const total = Object.values(jobs).reduce((a, b) => a + b, 0);
    // 500 notifications in packs of up to 50.
    expect(total).toBeGreaterThanOrEqual(10);
    expect(total).toBeLessThanOrEqual(20);
    await waitFor(async () => {
      const { rows } = await t.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM "${t.schema}".deliveries
          WHERE consumer_id = $1 AND status = 'completed'`,
        [id],
      );
      return rows[0].n === 500;
    });
  });

  it('retries a failing notification alone with backoff, attempts 1..attempts, then a dead letter reconcile --failed replays', async () => {
    const channel = `c${randomId()}`;
    const id = `p${randomId()}`;
    const runs = new Map<number, { attempt: number; at: number; replay: boolean }[]>();
    let fixed = false;
    const ids = await backlog(channel, 20);
    await start(
      defineConsumer<Payload>({
        id,
        channels: [channel],
        concurrency: 4,
        attempts: 3,
        backoff: { type: 'exponential', delay: 200 },
        startFrom: 'beginning',
        batch: { size: 50, maxWaitMs: 0 },
        handle(n) {
          const list = runs.get(n.payload.i) ?? [];
          list.push({ attempt: n.attempt, at: Date.now(), replay: n.isReplay });
          runs.set(n.payload.i, list);
          if (n.payload.i === 7 && !fixed) throw new Error('cannot handle 7 yet');
        },
      }),
    );
    const bad = ids[6];
    await waitFor(async () => (await ledgerOf(id, bad))?.status === 'failed', {
      timeoutMs: 20_000,
      message: 'notification 7 failed for good',
    });
    expect(await ledgerOf(id, bad)).toEqual({ status: 'failed', attempts: 3 });
    const seven = runs.get(7)!;
    expect(seven.map((r) => r.attempt)).toEqual([1, 2, 3]);
    // Exponential from 200 ms: 200 ms after attempt 1, 400 ms after attempt 2.
    expect(seven[1].at - seven[0].at).toBeGreaterThanOrEqual(180);
    expect(seven[2].at - seven[1].at).toBeGreaterThanOrEqual(380);
    for (let i = 1; i <= 20; i++) if (i !== 7) expect(runs.get(i)?.length, `#${i}`).toBe(1);
    const queue = queueOf(id);
    const dead = await queue.getJob(`n${bad}`);
    expect(await dead?.getState()).toBe('failed');
    expect(dead?.failedReason).toBe('cannot handle 7 yet');
    expect(dead?.attemptsMade).toBe(2);

    fixed = true;
    const result = await reconcile({ settings: apiSettings(t), failed: true, consumers: [id] });
    expect(result.replayed).toBe(1);
    await waitFor(async () => (await ledgerOf(id, bad))?.status === 'completed', {
      message: 'the replay completed',
    });
    expect(runs.get(7)!.slice(3)).toEqual([expect.objectContaining({ attempt: 1, replay: true })]);
    for (let i = 1; i <= 20; i++) if (i !== 7) expect(runs.get(i)?.length, `#${i}`).toBe(1);
  });

  it('fails a notification that throws PermanentError at once, as a dead letter, and nothing else', async () => {
    const channel = `c${randomId()}`;
    const id = `p${randomId()}`;
    const runs = new Map<number, number[]>();
    const ids = await backlog(channel, 10);
    await start(
      defineConsumer<Payload>({
        id,
        channels: [channel],
        attempts: 5,
        backoff: 10,
        startFrom: 'beginning',
        batch: { size: 10, maxWaitMs: 0 },
        handle(n) {
          runs.set(n.payload.i, [...(runs.get(n.payload.i) ?? []), n.attempt]);
          if (n.payload.i === 3) throw new PermanentError('never valid');
        },
      }),
    );
    await waitFor(async () => (await ledgerOf(id, ids[2]))?.status === 'failed', {
      message: 'notification 3 failed for good',
    });
    await waitFor(() => runs.size === 10);
    expect(await ledgerOf(id, ids[2])).toEqual({ status: 'failed', attempts: 1 });
    expect(runs.get(3)).toEqual([1]);
    for (let i = 1; i <= 10; i++) expect(runs.get(i), `#${i}`).toEqual([1]);
    const dead = await queueOf(id).getJob(`n${ids[2]}`);
    expect(await dead?.getState()).toBe('failed');
    expect(dead?.failedReason).toBe('never valid');
  });

  it('never runs one notification of two packs at once in a process (the same rows packed twice)', async () => {
    const channel = `c${randomId()}`;
    const id = `p${randomId()}`;
    const runs = new Map<string, number>();
    const inHandler = new Set<string>();
    let overlap = false;
    await backlog(channel, 5);
    const worker = createWorker({
      settings: apiSettings(t),
      consumers: [
        defineConsumer<Payload>({
          id,
          channels: [channel],
          concurrency: 8,
          batch: { size: 50, maxWaitMs: 0 },
          async handle(n) {
            if (inHandler.has(n.id)) overlap = true;
            inHandler.add(n.id);
            await new Promise((resolve) => setTimeout(resolve, 300));
            inHandler.delete(n.id);
            runs.set(n.id, (runs.get(n.id) ?? 0) + 1);
          },
        }),
      ],
    });
    running.push(worker);
    await worker.start();
    const { rows } = await t.pool.query<{ id: string; payload: string; created_at: Date }>(
      `SELECT id::text, payload::text, created_at FROM "${t.schema}".notifications
        WHERE channel = $1 ORDER BY id`,
      [channel],
    );
    const entry = (r: (typeof rows)[number]) => ({
      id: r.id,
      channel,
      payload: r.payload,
      context: null,
      createdAt: r.created_at.toISOString(),
    });
    const queue = queueOf(id);
    // The same rows in two groupings, as after a listener's lost COMMIT: two different jobs.
    await queue.addBulk(
      [rows.slice(0, 4), rows].map((group) => ({
        name: 'pack',
        data: { batch: group.map(entry) },
        opts: { jobId: batchJobIdFor(group.map((r) => r.id)) },
      })),
    );
    await waitFor(() => runs.size === 5, { message: 'five handled' });
    await new Promise((resolve) => setTimeout(resolve, 800));
    expect([...runs.values()]).toEqual([1, 1, 1, 1, 1]);
    expect(overlap).toBe(false);
  });

  it('shows a pack on the board: a readable name, its notifications, each one outcome', async () => {
    const channel = `c${randomId()}`;
    const id = `p${randomId()}`;
    const ids = await backlog(channel, 5);
    let handled = 0;
    await start(
      defineConsumer<Payload>({
        id,
        channels: [channel],
        attempts: 2,
        backoff: 10,
        startFrom: 'beginning',
        batch: { size: 5, maxWaitMs: 0 },
        handle(n) {
          handled++;
          if (n.payload.i === 2 && n.attempt === 1) throw new Error('first try fails');
        },
      }),
    );
    await waitFor(() => handled === 6, { message: 'five handled, one of them twice' });
    const router = createBoardRouter({ settings: apiSettings(t), readOnly: true });
    const app = express();
    app.use('/', router);
    const server: Server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    try {
      const { port } = server.address() as { port: number };
      const url = `http://127.0.0.1:${port}/api/queues?activeQueue=${id}&status=completed&page=1`;
      type BoardJob = {
        id: string;
        name: string;
        data: { batch?: { id: string }[] };
        returnValue: { completed: number; outcomes: Record<string, string> } | null;
      };
      let pack: BoardJob | undefined;
      await waitFor(async () => {
        const body = (await (await fetch(url)).json()) as {
          queues: { name: string; jobs: BoardJob[] }[];
        };
        pack = body.queues.find((q) => q.name === id)?.jobs.find((j) => j.id.startsWith('b'));
        return pack !== undefined;
      });
      expect(pack!.name).toBe(`5 × ${channel}, ${ids[0]}…${ids[4]}`);
      expect(pack!.data.batch!.map((e) => e.id)).toEqual(ids);
      expect(pack!.returnValue!.completed).toBe(4);
      expect(pack!.returnValue!.outcomes[ids[0]]).toBe('completed');
      expect(pack!.returnValue!.outcomes[ids[1]]).toBe(
        `failed (attempt 1: first try fails); retried as job n${ids[1]}`,
      );
    } finally {
      server.close();
      await router.close();
    }
  });
});
