/**
 * Issue 2, outages: `listen` and `work` running against a throwaway Postgres or Redis that is
 * stopped log the failure and keep retrying; once the server is back they carry on with nothing
 * lost and nothing handled twice. Notifications stored while Redis is down (and wiped: the
 * throwaway Redis keeps no data) are bridged after it comes back.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  handledSummary,
  hasMsg,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  waitForHandled,
  writeConsumers,
} from '../support/delivery.js';
import {
  startPostgres,
  startRedis,
  type ThrowawayPostgres,
  type ThrowawayRedis,
} from '../support/servers.js';
import { sleep } from '../support/wait.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  removeConsumerDirs();
});

const CONSUMER = `${RECORDER}
export default defineConsumer({ id: 'rec', channels: ['orders'], concurrency: 5,
  async handle(n) { await record('rec', n); } });`;

async function send(t: TestEnv, from: number, count: number): Promise<void> {
  await t.pool.query(
    `SELECT "${t.schema}".notify('orders', jsonb_build_object('i', i))
       FROM generate_series($1::int, $2::int) AS i`,
    [from, from + count - 1],
  );
}

async function unbridged(t: TestEnv): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
  );
  return rows[0].n;
}

async function expectExactlyOnce(t: TestEnv, total: number): Promise<void> {
  await waitForHandled(t.pool, t.schema, total, 45_000);
  await sleep(500);
  expect(await handledSummary(t.pool, t.schema)).toEqual({
    rec: { runs: total, distinct: total, duplicates: 0 },
  });
  expect(await unbridged(t)).toBe(0);
}

/** Starts work and listen with quick reconnects. */
async function startBoth(t: TestEnv): Promise<[CliHandle, CliHandle]> {
  const dir = writeConsumers({ 'rec.mjs': CONSUMER });
  const work = await startWork(t.env, dir, 1);
  const listen = await startListen(t.env, ['--reconnect-delay', '0.2', '--poll-interval', '1']);
  return [listen, work];
}

describe('Postgres outage', () => {
  let server: ThrowawayPostgres;

  it('is logged and retried by listen and work, which carry on after it is back', async () => {
    server = await startPostgres();
    cleanups.push(() => server.destroy());
    const t = createTestEnv({ databaseUrl: server.url });
    cleanups.push(() => t.cleanup());
    await migrateWithHandledTable(t);
    const [listen, work] = await startBoth(t);
    await send(t, 1, 20);
    await waitForHandled(t.pool, t.schema, 20);

    const listenMark = listen.lines().length;
    const workMark = work.lines().length;
    await server.stop('fast');
    // The listener notices at once (its LISTEN connection drops) and keeps trying to reconnect.
    await listen.waitForOutput(hasMsg('LISTEN connection lost; reconnecting'), 10_000, listenMark);
    await listen.waitForOutput(hasMsg('LISTEN connection failed; retrying'), 10_000, listenMark);
    // The worker's idle pool connections (ledger) die too: logged, not fatal.
    await work.waitForOutput(hasMsg('idle Postgres connection failed'), 10_000, workMark);
    await sleep(1500);
    expect(listen.exited).toBe(false);
    expect(work.exited).toBe(false);

    await server.restart();
    await listen.waitForOutput(hasMsg('LISTEN connection ready'), 30_000, listenMark);
    await send(t, 21, 20);
    await expectExactlyOnce(t, 40);

    // The failures were logged as warnings, with the cause.
    const warnings = listen.logs().filter((l) => l.level === 40);
    expect(warnings.length).toBeGreaterThan(0);
    expect(warnings.every((w) => typeof w.err === 'string' && w.err.length > 0)).toBe(true);
    await stopGracefully(listen);
    await stopGracefully(work);
  }, 120_000);
});

describe('Redis outage', () => {
  let server: ThrowawayRedis;

  it('keeps notifications stored meanwhile and bridges them once Redis is back', async () => {
    server = await startRedis();
    cleanups.push(() => server.destroy());
    const t = createTestEnv({ redisUrl: server.url });
    cleanups.push(() => t.cleanup());
    await migrateWithHandledTable(t);
    const [listen, work] = await startBoth(t);
    await send(t, 1, 20);
    await waitForHandled(t.pool, t.schema, 20);

    const listenMark = listen.lines().length;
    const workMark = work.lines().length;
    await server.stop();
    await listen.waitForOutput(hasMsg(/redis connection error/), 10_000, listenMark);
    await work.waitForOutput(hasMsg(/redis connection error/), 10_000, workMark);

    // Stored while Redis is down: they stay unbridged (the batch cannot commit without Redis).
    await send(t, 21, 30);
    await sleep(2000);
    expect(await unbridged(t)).toBe(30);
    expect(listen.exited).toBe(false);
    expect(work.exited).toBe(false);

    // Redis comes back empty; everything stored meanwhile is bridged and handled once.
    await server.restart();
    await expectExactlyOnce(t, 50);
    await send(t, 51, 10);
    await expectExactlyOnce(t, 60);
    await stopGracefully(listen);
    await stopGracefully(work);
  }, 120_000);
});
