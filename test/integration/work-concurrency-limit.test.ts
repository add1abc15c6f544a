/**
 * A consumer's `concurrency` is the number of its handlers running at once in one process, even
 * though the worker lets BullMQ hold more jobs than that (their ledger lookups overlap running
 * handlers, src/consume/slots.ts). A timed-out handler keeps its slot until it settles.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createListener, createWorker, migrate, notify } from '../../src/index.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});
afterAll(async () => {
  await t.cleanup();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('handler concurrency', () => {
  it('runs at most `concurrency` handlers at once, and reaches it', async () => {
    const settings = apiSettings(t);
    let running = 0;
    let most = 0;
    const handled = new Set<string>();
    const worker = createWorker({
      settings,
      consumers: [
        {
          id: 'three-at-once',
          channels: ['limit'],
          concurrency: 3,
          async handle(n) {
            running++;
            most = Math.max(most, running);
            await sleep(15 + Math.random() * 25);
            running--;
            handled.add(n.id);
          },
        },
        {
          id: 'one-at-once',
          channels: ['limit'],
          async handle() {
            running++;
            await sleep(2);
            running--;
          },
        },
      ],
    });
    await worker.start();
    const listener = createListener({ settings });
    await listener.start();
    try {
      for (let i = 0; i < 60; i++) await notify(t.pool, 'limit', { i }, { schema: t.schema });
      await waitFor(() => handled.size === 60, { timeoutMs: 30_000, message: '60 handled' });
    } finally {
      await listener.stop();
      await worker.close();
    }
    // Both consumers share `running`: 3 + 1 at most.
    expect(most).toBeLessThanOrEqual(4);
    expect(most).toBeGreaterThanOrEqual(3);
  });

  it('keeps a timed-out handler in its slot until it settles', async () => {
    const settings = apiSettings(t);
    let running = 0;
    let most = 0;
    let runs = 0;
    const worker = createWorker({
      settings,
      consumers: [
        {
          id: 'slow-one',
          channels: ['slow'],
          concurrency: 1,
          timeout: 50,
          attempts: 1,
          async handle() {
            runs++;
            running++;
            most = Math.max(most, running);
            await sleep(250); // ignores its signal
            running--;
          },
        },
      ],
    });
    await worker.start();
    const listener = createListener({ settings });
    await listener.start();
    try {
      for (let i = 0; i < 4; i++) await notify(t.pool, 'slow', { i }, { schema: t.schema });
      await waitFor(() => runs === 4 && running === 0, { timeoutMs: 20_000, message: '4 runs' });
    } finally {
      await listener.stop();
      await worker.close();
    }
    expect(most).toBe(1);
  });
});
