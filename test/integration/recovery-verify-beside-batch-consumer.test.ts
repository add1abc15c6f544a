/**
 * `reconcile --verify` in a loop beside a live batch consumer re-enqueues nothing that is still in
 * flight. A batch consumer (size 50, maxWaitMs 500, concurrency 10, a 200 ms handler) gets about
 * 200 notifications a second while verify runs again and again: notifications sit inside batch
 * jobs (no `n<id>` job of their own) that the listener creates and the workers drain during each
 * walk. Every notification is handled, and none twice.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import {
  RECORDER,
  handledSummary,
  migrateWithHandledTable,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  waitForHandled,
  writeConsumers,
  writeWhileVerifying,
} from '../support/delivery.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { sleep } from '../support/wait.js';

const RATE = 200;
const SECONDS = 15;

let t: TestEnv;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  dir = writeConsumers({
    'batched.mjs': `${RECORDER}
export default defineConsumer({ id: 'batched', channels: ['orders'],
  batch: { size: 50, maxWaitMs: 500 }, concurrency: 10,
  async handleBatch(ns) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    for (const n of ns) await record('batched', n);
  } });`,
  });
});

afterAll(async () => {
  removeConsumerDirs();
  await t?.cleanup();
});

describe('reconcile --verify beside a live batch consumer', () => {
  it('re-enqueues nothing still in flight: every notification handled once', async () => {
    const work = await startWork(t.env, dir, 1);
    const listen = await startListen(t.env, ['--poll-interval', '0.2']);
    const { sent, verifies: runs } = await writeWhileVerifying(t, 'orders', RATE, SECONDS);
    expect(runs).toBeGreaterThanOrEqual(2);
    await waitForHandled(t.pool, t.schema, sent, 90_000);
    // One more verify once all is done, then time for anything it (wrongly) added to run.
    const last = await runCli(['reconcile', '--verify', '--json'], { env: t.env });
    expect(JSON.parse(last.stdout.trim().split('\n').pop()!)).toMatchObject({ enqueued: 0 });
    await sleep(3000);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      batched: { runs: sent, distinct: sent, duplicates: 0 },
    });
    await stopGracefully(listen);
    await stopGracefully(work);
  }, 180_000);
});
