/**
 * A job whose hash survived while its entry in BullMQ's lists was lost (eviction, a failover that
 * lost a list write, an operator deleting keys) sits in no state: BullMQ's getState() says
 * 'unknown' and no worker ever runs it. `reconcile --verify` counts it as lost, removes it and
 * enqueues the notification again, so it is handled, once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queuePrefix } from '../../src/redis.js';
import { runCli } from '../support/cli.js';
import {
  RECORDER,
  handledSummary,
  migrateWithHandledTable,
  removeConsumerDirs,
  sendNotifications,
  startListen,
  startWork,
  stopGracefully,
  waitForHandled,
  writeConsumers,
} from '../support/delivery.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  dir = writeConsumers({
    'keeper.mjs': `${RECORDER}
export default defineConsumer({ id: 'keeper', channels: ['orders'],
  async handle(n) { await record('keeper', n); } });`,
  });
});

afterAll(async () => {
  removeConsumerDirs();
  await t?.cleanup();
});

/** The Redis key of the consumer queue's `suffix` (wait list, job hash), as BullMQ names it. */
async function queueKey(suffix: string): Promise<string> {
  const prefix = queuePrefix({ redisUrl: t.redisUrl, prefix: t.prefix }, 'keeper');
  return Promise.resolve(`${prefix}:keeper:${suffix}`);
}

describe('reconcile --verify and a job in no BullMQ state', () => {
  it('removes the stranded job and enqueues the notification again; every one runs once', async () => {
    // Register the consumer, then stop its worker so the jobs wait.
    const first = await startWork(t.env, dir, 1);
    await stopGracefully(first);
    const listen = await startListen(t.env);
    await sendNotifications(t.databaseUrl, t.schema, 5, 1, () => 'orders');
    const waitKey = await queueKey('wait');
    await waitFor(async () => (await t.redis.llen(waitKey)) === 5, {
      timeoutMs: 20_000,
      message: '5 jobs waiting',
    });
    await stopGracefully(listen);

    // Lose one job's list entry; its hash stays.
    const [stranded] = await t.redis.lrange(waitKey, -1, -1);
    expect(await t.redis.lrem(waitKey, 0, stranded)).toBe(1);
    expect(await t.redis.hexists(await queueKey(stranded), 'data')).toBe(1);

    const dry = await runCli(['reconcile', '--verify', '--dry-run', '--json'], { env: t.env });
    expect(dry.code, dry.stderr).toBe(0);
    expect(JSON.parse(dry.stdout.trim().split('\n').pop()!)).toMatchObject({
      enqueued: 1,
      alreadyQueued: 4,
    });
    const result = await runCli(['reconcile', '--verify', '--json'], { env: t.env });
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout.trim().split('\n').pop()!)).toMatchObject({
      enqueued: 1,
      alreadyQueued: 4,
    });
    expect(await t.redis.llen(waitKey)).toBe(5);

    const work = await startWork(t.env, dir, 1);
    await waitForHandled(t.pool, t.schema, 5, 30_000);
    await sleep(1000);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      keeper: { runs: 5, distinct: 5, duplicates: 0 },
    });
    // Once handled, a second verify finds nothing to do.
    const again = await runCli(['reconcile', '--verify', '--json'], { env: t.env });
    expect(JSON.parse(again.stdout.trim().split('\n').pop()!)).toMatchObject({ enqueued: 0 });
    await stopGracefully(work);
  });
});
