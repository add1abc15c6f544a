/**
 * A Redis that hangs (SIGSTOP: the connection stays up, nothing answers) during a batch. The
 * listener's enqueue timeout rolls the batch back and it retries, again and again; the adds it
 * gave up on must not pile up in the client and all run when Redis wakes (one more copy per
 * retry). Afterwards every row is bridged once, Redis ran at most the one abandoned copy that had
 * already reached its socket besides the batch that went in, and the listener claimed smaller
 * batches while Redis did not keep up.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queuePrefix } from '../../src/redis.js';
import { runCli, type CliHandle } from '../support/cli.js';
import { hasMsg, sendNotifications, startListen, stopGracefully } from '../support/delivery.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { startRedis, type ThrowawayRedis } from '../support/servers.js';
import { waitFor } from '../support/wait.js';

const ROWS = 10;

let redis: ThrowawayRedis;
let t: TestEnv;
let redisPid: number;
let listen: CliHandle | undefined;

beforeAll(async () => {
  redis = await startRedis();
  t = createTestEnv({ redisUrl: redis.url });
  const migrated = await runCli(['migrate'], { env: t.env });
  expect(migrated.code, migrated.stderr).toBe(0);
  await t.pool.query(
    `INSERT INTO "${t.schema}".consumers (id) VALUES ('hang');
     INSERT INTO "${t.schema}".subscriptions (consumer_id, channel, after_id) VALUES ('hang', 'orders', 0)`,
  );
  const info = await t.redis.info('server');
  redisPid = Number(/process_id:(\d+)/.exec(info)?.[1]);
  expect(redisPid).toBeGreaterThan(0);
}, 60_000);

afterAll(async () => {
  if (redisPid) process.kill(redisPid, 'SIGCONT');
  if (listen && !listen.exited) listen.kill('SIGKILL');
  await t?.cleanup();
  await redis?.destroy();
});

async function unbridged(): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
  );
  return rows[0].n;
}

/** The queue's events by name ('added', 'duplicated', ...). */
async function events(): Promise<Record<string, number>> {
  const key = `${queuePrefix({ redisUrl: t.redisUrl, prefix: t.prefix }, 'hang')}:hang:events`;
  const entries = (await t.redis.xrange(key, '-', '+')) as [string, string[]][];
  const counts: Record<string, number> = {};
  for (const [, fields] of entries) {
    const event = fields[fields.indexOf('event') + 1];
    counts[event] = (counts[event] ?? 0) + 1;
  }
  return counts;
}

describe('a Redis that hangs during a batch', () => {
  it('replays no abandoned add, shrinks the claim, and bridges every row once it wakes', async () => {
    listen = await startListen(t.env, [
      '--enqueue-timeout',
      '1',
      '--reconnect-delay',
      '0.2',
      '--poll-interval',
      '0.2',
    ]);
    process.kill(redisPid, 'SIGSTOP');
    await sendNotifications(t.databaseUrl, t.schema, ROWS, 1, () => 'orders');
    const timeouts = (): number =>
      listen!
        .logs()
        .filter(
          (l) =>
            hasMsg('bridging a batch failed; retrying')({ json: l }) &&
            /did not accept the batch in time/.test(String(l.err)),
        ).length;
    await waitFor(() => timeouts() >= 4, {
      timeoutMs: 60_000,
      message: 'four enqueue timeouts while Redis hangs',
    });
    expect(await unbridged()).toBe(ROWS);
    process.kill(redisPid, 'SIGCONT');
    await waitFor(async () => (await unbridged()) === 0, {
      timeoutMs: 30_000,
      message: 'every row bridged once Redis is back',
    });
    // Let whatever was still queued anywhere reach Redis.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const seen = await events();
    expect(seen.added).toBe(ROWS);
    // The batch that went in may meet the one copy that had reached the socket before the first
    // timeout; the later retries' adds never left the client.
    expect(seen.duplicated ?? 0, JSON.stringify(seen)).toBeLessThanOrEqual(ROWS);
    const shrunk = listen
      .logs()
      .filter((l) => typeof l.claimLimit === 'number' && (l.claimLimit as number) < 500);
    expect(shrunk.length, 'claims shrink after an enqueue timeout').toBeGreaterThan(0);
    await stopGracefully(listen);
  }, 120_000);
});
