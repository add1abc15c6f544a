/**
 * `pgq-bridge consumers remove <id> [--channels a,b]`: unsubscribes channels or retires the
 * consumer. Afterwards the listener makes no more jobs for it there, its owed rows stop holding
 * up `cleanup`, and a `work` process running a definition registered before the removal does not
 * bring the subscription (or the consumer) back; a changed definition does. Bad input exits 2.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  hasMsg,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
let s: string;
beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

function definition(channels: string[], attempts = 3): string {
  return writeConsumers({
    'x.mjs': `${RECORDER}
export default defineConsumer({ id: 'x', channels: ${JSON.stringify(channels)}, attempts: ${attempts},
  async handle(n) { await record('x', n); } });`,
  });
}

async function subscriptions(): Promise<string[]> {
  const { rows } = await t.pool.query<{ channel: string }>(
    `SELECT channel FROM ${s}.subscriptions WHERE consumer_id = 'x' ORDER BY channel`,
  );
  return rows.map((r) => r.channel);
}

/** Stores `count` notifications on `channel`, bridged 10 days ago with no outcome yet. */
async function oldOwedRows(channel: string, count: number): Promise<void> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT ${s}.notify($1, jsonb_build_object('i', i))::text AS id FROM generate_series(1, $2) i`,
    [channel, count],
  );
  await t.pool.query(
    `UPDATE ${s}.notifications SET created_at = now() - interval '10 days',
            bridged_at = now() - interval '10 days' WHERE id = ANY($1::bigint[])`,
    [rows.map((r) => r.id)],
  );
}

async function cleanupDeleted(): Promise<number> {
  const result = await runCli(['cleanup', '--days', '7', '--json'], { env: t.env });
  expect(result.code, result.stderr).toBe(0);
  return (JSON.parse(result.stdout) as { deleted: number }).deleted;
}

async function cli(args: string[]): Promise<string> {
  const result = await runCli(['consumers', ...args], { env: t.env });
  expect(result.code, result.stderr + result.stdout).toBe(0);
  return result.stdout;
}

describe('consumers remove', () => {
  it('--channels unsubscribes for good; cleanup stops waiting for those rows', async () => {
    const dir = definition(['a', 'b']);
    await stopGracefully(await startWork(t.env, dir, 1));
    expect(await subscriptions()).toEqual(['a', 'b']);
    await oldOwedRows('a', 10);
    await oldOwedRows('b', 6);
    expect(await cleanupDeleted()).toBe(0);

    expect(await cli(['remove', 'x', '--channels', 'b'])).toBe(
      'unsubscribed consumer x from b; still subscribed to a\n',
    );
    expect(await subscriptions()).toEqual(['a']);
    expect(await cleanupDeleted()).toBe(6);

    // A worker of the definition registered before the removal does not subscribe b again.
    const again = await startWork(t.env, dir, 1);
    expect(again.logs().find(hasMsg(/not subscribing channels removed/))).toMatchObject({
      consumer: 'x',
      channels: ['b'],
    });
    await stopGracefully(again);
    expect(await subscriptions()).toEqual(['a']);

    // A changed definition (a new version that lists b) does.
    await stopGracefully(await startWork(t.env, definition(['a', 'b'], 4), 1));
    expect(await subscriptions()).toEqual(['a', 'b']);
    const listed = JSON.parse(await cli(['list', '--json'])) as Record<string, unknown>[];
    expect(listed[0]).toMatchObject({ id: 'x', channels: ['a', 'b'], removedChannels: [] });
  });

  it('without --channels retires the consumer: no subscription, no wait, no resurrection', async () => {
    expect(await cli(['remove', 'x'])).toBe('retired consumer x (unsubscribed a, b)\n');
    expect(await subscriptions()).toEqual([]);
    expect(await cleanupDeleted()).toBe(10);

    // The retired definition's worker refuses to start it instead of bringing it back.
    const dir = definition(['a', 'b'], 4);
    const refused = startCli(['work', '--consumers-dir', dir], { env: t.env });
    await refused.waitForOutput(hasMsg(/consumer was retired/), 30_000);
    expect(refused.logs().some(hasMsg('consumer registered; worker started'))).toBe(false);
    await stopGracefully(refused);
    expect(await subscriptions()).toEqual([]);
    const [x] = JSON.parse(await cli(['list', '--json'])) as { retiredAt: string | null }[];
    expect(x.retiredAt).not.toBeNull();
    expect(await cli(['list'])).toMatch(/^x {2}RETIRED at /m);

    // Rows of its channels bridged now are nobody's: the listener makes no job for x.
    const listen = startCli(['listen'], { env: t.env });
    await listen.waitForOutput(hasMsg('LISTEN connection ready'), 30_000);
    await t.pool.query(`SELECT ${s}.notify('a', '{}')`);
    await waitFor(
      async () =>
        (
          await t.pool.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM ${s}.notifications WHERE bridged_at IS NULL`,
          )
        ).rows[0].n === 0,
      { message: 'the row bridged' },
    );
    await stopGracefully(listen);
    expect(await t.redis.exists(`${t.prefix}:x:wait`)).toBe(0);

    // A new version registers it again, as a new consumer.
    await stopGracefully(await startWork(t.env, definition(['a'], 5), 1));
    expect(await subscriptions()).toEqual(['a']);
  });

  const bad: Array<[string, string[], RegExp]> = [
    ['an unknown consumer', ['remove', 'nobody'], /unknown consumer "nobody"; registered: x/],
    ['a bad consumer id', ['remove', 'no such'], /invalid consumer id/],
    [
      'a channel it does not subscribe to',
      ['remove', 'x', '--channels', 'zzz'],
      /does not subscribe to zzz/,
    ],
    ['a bad channel name', ['remove', 'x', '--channels', 'bad channel'], /invalid channel name/],
    ['no id', ['remove'], /missing required argument 'id'/],
    ['an unknown subcommand', ['frobnicate'], /unknown command 'frobnicate'/],
  ];
  for (const [what, args, message] of bad) {
    it(`${what} is a usage error (exit 2)`, async () => {
      const result = await runCli(['consumers', ...args], { env: t.env });
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr).toMatch(message);
      expect(await subscriptions()).toEqual(['a']);
    });
  }
});
