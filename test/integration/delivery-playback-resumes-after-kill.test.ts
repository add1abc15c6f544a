/**
 * A 'beginning' consumer's playback survives its process: `work` is killed (SIGKILL) halfway
 * through playing a large backlog to it; the next `work` start (two processes starting at once)
 * finishes the playback on its own, and every stored notification is handled exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queuePrefix } from '../../src/redis.js';
import { startCli } from '../support/cli.js';
import {
  RECORDER,
  handledSummary,
  hasMsg,
  migrateWithHandledTable,
  removeConsumerDirs,
  stopGracefully,
  waitForHandled,
  writeConsumers,
} from '../support/delivery.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

const BACKLOG = 20_000;

let t: TestEnv;
let dir: string;
/** The same consumer, whose handler never finishes: the killed process records nothing. */
let stuckDir: string;

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  // Stored and bridged long before the consumer existed: only playback can bring them to it.
  await t.pool.query(
    `INSERT INTO "${t.schema}".notifications (channel, payload, bridged_at)
     SELECT 'orders', jsonb_build_object('i', i), now() FROM generate_series(1, ${BACKLOG}) AS i`,
  );
  dir = writeConsumers({
    'late.mjs': `${RECORDER}
export default defineConsumer({ id: 'late', channels: ['orders'], startFrom: 'beginning',
  concurrency: 50, async handle(n) { await record('late', n); } });`,
  });
  stuckDir = writeConsumers({
    'late.mjs': `${RECORDER}
export default defineConsumer({ id: 'late', channels: ['orders'], startFrom: 'beginning',
  concurrency: 50, async handle() { await new Promise(() => {}); } });`,
  });
}, 60_000);

afterAll(async () => {
  removeConsumerDirs();
  await t?.cleanup();
});

/** Jobs the consumer's queue holds in any state (what playback has enqueued so far). */
async function jobsEnqueued(): Promise<number> {
  const p = `${queuePrefix({ redisUrl: t.redisUrl, prefix: t.prefix }, 'late')}:late`;
  const [wait, active, completed, failed] = await Promise.all([
    t.redis.llen(`${p}:wait`),
    t.redis.llen(`${p}:active`),
    t.redis.zcard(`${p}:completed`),
    t.redis.zcard(`${p}:failed`),
  ]);
  return wait + active + completed + failed;
}

describe('playback of a new consumer', () => {
  it('is finished by the next work start after a kill mid-playback', async () => {
    const first = startCli(['work', '--consumers-dir', stuckDir], { env: t.env });
    await first.waitForOutput(hasMsg('consumer registered; worker started'), 30_000);
    await waitFor(async () => (await jobsEnqueued()) >= 1000, {
      timeoutMs: 60_000,
      intervalMs: 10,
      message: 'playback under way',
    });
    first.killGroup('SIGKILL');
    await first.waitForExit(10_000);
    const enqueued = await jobsEnqueued();
    expect(enqueued, 'the kill landed before playback finished').toBeLessThan(BACKLOG);

    // Two processes start at once; between them they finish the playback, nothing twice.
    const again = [
      startCli(['work', '--consumers-dir', dir], { env: t.env }),
      startCli(['work', '--consumers-dir', dir], { env: t.env }),
    ];
    await waitForHandled(t.pool, t.schema, BACKLOG, 240_000);
    await sleep(1500);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      late: { runs: BACKLOG, distinct: BACKLOG, duplicates: 0 },
    });
    for (const w of again) await stopGracefully(w);
  }, 300_000);
});
