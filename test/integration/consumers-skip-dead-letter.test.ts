/**
 * `pgq-bridge consumers skip <consumer> <notification-id>` gives up one dead letter: the ledger
 * records it as 'skipped', its BullMQ job is removed, `reconcile --failed` never replays it and
 * `cleanup` no longer keeps its row. A delivery still waiting for a retry can be given up too;
 * a completed one cannot. Bad input exits 2.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
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
import { waitFor } from '../support/wait.js';
import type { CliHandle } from '../support/cli.js';

let t: TestEnv;
let s: string;
let listen: CliHandle;
let work: CliHandle;

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  await migrateWithHandledTable(t);
  const dir = writeConsumers({
    'flaky.mjs': `${RECORDER}
export default defineConsumer({ id: 'flaky', channels: ['jobs'], attempts: 2, backoff: 50,
  async handle(n) {
    await record('flaky', n);
    if (n.payload.fail) throw new Error('boom ' + n.id);
  } });`,
    'slow.mjs': `${RECORDER}
export default defineConsumer({ id: 'slow', channels: ['later'], attempts: 5,
  backoff: { type: 'fixed', delay: 600000 },
  async handle(n) { await record('slow', n); throw new Error('not yet'); } });`,
  });
  listen = await startListen(t.env);
  work = await startWork(t.env, dir, 2);
});
afterAll(async () => {
  await stopGracefully(work);
  await stopGracefully(listen);
  await t.cleanup();
  removeConsumerDirs();
});

async function notify(channel: string, payload: object): Promise<string> {
  const { rows } = await t.pool.query<{ id: string }>(`SELECT ${s}.notify($1, $2)::text AS id`, [
    channel,
    JSON.stringify(payload),
  ]);
  return rows[0].id;
}

async function ledger(consumer: string, id: string): Promise<string | null> {
  const { rows } = await t.pool.query<{ status: string }>(
    `SELECT status FROM ${s}.deliveries WHERE consumer_id = $1 AND notification_id = $2`,
    [consumer, id],
  );
  return rows[0]?.status ?? null;
}

async function runs(id: string): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${s}.handled WHERE notification_id = $1`,
    [id],
  );
  return rows[0].n;
}

function skip(consumer: string, id: string) {
  return runCli(['consumers', 'skip', consumer, id], { env: t.env });
}

describe('consumers skip', () => {
  let dead: string;
  let done: string;

  it('gives up a dead letter: ledger skipped, job removed, never replayed', async () => {
    dead = await notify('jobs', { fail: true });
    done = await notify('jobs', { fail: false });
    await waitFor(async () => (await ledger('flaky', dead)) === 'failed', {
      timeoutMs: 20_000,
      message: 'the dead letter',
    });
    await waitFor(async () => (await ledger('flaky', done)) === 'completed', {
      message: 'the completed one',
    });
    expect(await t.redis.zscore(`${t.prefix}:flaky:failed`, `n${dead}`)).not.toBeNull();

    const result = await skip('flaky', dead);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe(
      `skipped notification ${dead} for consumer flaky (was failed; job failed, removed)\n`,
    );
    expect(await ledger('flaky', dead)).toBe('skipped');
    expect(await t.redis.exists(`${t.prefix}:flaky:n${dead}`)).toBe(0);

    const replay = await runCli(['reconcile', '--failed', '--json'], { env: t.env });
    expect(replay.code, replay.stderr).toBe(0);
    expect(JSON.parse(replay.stdout.trim().split('\n').pop()!)).toMatchObject({ replayed: 0 });
    const verify = await runCli(['reconcile', '--verify', '--json'], { env: t.env });
    expect(verify.code, verify.stderr).toBe(0);
    expect(JSON.parse(verify.stdout.trim().split('\n').pop()!)).toMatchObject({ enqueued: 0 });
    await new Promise((r) => setTimeout(r, 500));
    expect(await runs(dead)).toBe(2);
    expect(await ledger('flaky', dead)).toBe('skipped');

    // Skipping it again changes nothing and says so.
    const again = await skip('flaky', dead);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe(`notification ${dead} was already skipped for consumer flaky\n`);
  });

  it('a skipped delivery no longer holds up cleanup', async () => {
    await t.pool.query(
      `UPDATE ${s}.notifications SET created_at = now() - interval '10 days' WHERE id IN ($1, $2)`,
      [dead, done],
    );
    const result = await runCli(['cleanup', '--days', '7', '--json'], { env: t.env });
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ deleted: 2, kept: 0 });
  });

  it('gives up a delivery waiting for its next retry; its handler never runs again', async () => {
    const id = await notify('later', {});
    await waitFor(
      async () => (await t.redis.zscore(`${t.prefix}:slow:delayed`, `n${id}`)) !== null,
      {
        timeoutMs: 20_000,
        message: 'the job delayed for its retry',
      },
    );
    const result = await skip('slow', id);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/\(was retrying; job delayed, removed\)/);
    expect(await ledger('slow', id)).toBe('skipped');
    expect(await t.redis.exists(`${t.prefix}:slow:n${id}`)).toBe(0);
    expect(await runs(id)).toBe(1);
  });

  it('refuses what is no dead letter and bad input, with exit 2', async () => {
    const completed = await notify('jobs', { fail: false });
    await waitFor(async () => (await ledger('flaky', completed)) === 'completed', {
      message: 'completed',
    });
    const cases: Array<[string[], RegExp]> = [
      [['flaky', completed], /is no dead letter: consumer flaky completed it/],
      [['nobody', completed], /unknown consumer "nobody"; registered: flaky, slow/],
      [['flaky', 'abc'], /invalid notification id "abc"/],
      [['flaky', '-3'], /invalid notification id|unknown option/],
      [['flaky', '99999999'], /is not a delivery of consumer flaky/],
      [['slow', completed], /is not a delivery of consumer slow/],
      [['flaky'], /missing required argument 'notification-id'/],
    ];
    for (const [args, message] of cases) {
      const result = await runCli(['consumers', 'skip', ...args], { env: t.env });
      expect(result.code, `${args.join(' ')}: ${result.stderr}`).toBe(2);
      expect(result.stderr).toMatch(message);
    }
    expect(await ledger('flaky', completed)).toBe('completed');
  });
});
