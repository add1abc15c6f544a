/**
 * Issue 3: Redis loses every job (a wipe of the test prefix's keys: for BullMQ the same as
 * FLUSHALL or a restart without persistence) while 20,000 notifications are in flight;
 * `reconcile --verify` re-enqueues the lost ones: every notification is handled, and none that
 * the ledger showed completed is handled again. Then `listen --recover` does the same on start.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, deleteKeysWithPrefix, type TestEnv } from '../support/env.js';
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
import { sleep, waitFor } from '../support/wait.js';

const TOTAL = 20_000;

let t: TestEnv;
let work: CliHandle;

async function scalar(sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(sql, params);
  return rows[0].n;
}

async function distinctHandled(): Promise<number> {
  return scalar(`SELECT count(DISTINCT notification_id)::int AS n FROM "${t.schema}".handled`);
}

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  const dir = writeConsumers({
    'consumers.mjs': `${RECORDER}
export default defineConsumer({ id: 'sink', channels: ['events'], concurrency: 20,
  async handle(n) {
    await record('sink', n);
    // Slow enough that most jobs are still waiting in Redis when it is wiped.
    await new Promise((resolve) => setTimeout(resolve, 8));
  } });`,
  });
  work = await startWork(t.env, dir, 1);
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

describe('Redis wiped with jobs in flight', () => {
  it('reconcile --verify brings back every lost job and reruns nothing completed', async () => {
    const listen = await startListen(t.env);
    await t.pool.query(
      `SELECT "${t.schema}".notify('events', jsonb_build_object('i', g))
         FROM generate_series(1, ${TOTAL}) g`,
    );
    await waitFor(
      async () =>
        (await scalar(
          `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NOT NULL`,
        )) === TOTAL,
      { timeoutMs: 60_000, message: 'every row bridged' },
    );
    await stopGracefully(listen);
    await waitFor(async () => (await distinctHandled()) >= 1000, {
      timeoutMs: 30_000,
      message: '1000 handled',
    });

    const wiped = await deleteKeysWithPrefix(t.redis, t.prefix);
    expect(wiped).toBeGreaterThan(0);
    const handledAtWipe = await distinctHandled();
    expect(handledAtWipe).toBeLessThan(TOTAL);
    // Jobs that were active finish (BullMQ cannot record them any more; the ledger does).
    await sleep(1500);

    const { rows: done } = await t.pool.query<{ id: string }>(
      `SELECT notification_id::text AS id FROM "${t.schema}".deliveries
        WHERE consumer_id = 'sink' AND status = 'completed'`,
    );
    const completedBefore = done.map((r) => r.id);
    expect(completedBefore.length).toBeGreaterThanOrEqual(handledAtWipe);
    expect(await distinctHandled()).toBe(completedBefore.length);

    const result = await runCli(['reconcile', '--verify', '--json'], {
      env: t.env,
      timeoutMs: 60_000,
    });
    expect(result.code, result.stderr + result.stdout).toBe(0);
    const summary = JSON.parse(result.stdout.trim().split('\n').pop()!) as Record<string, number>;
    expect(summary).toMatchObject({
      scanned: TOTAL,
      bridged: 0,
      alreadyDone: completedBefore.length,
      alreadyQueued: 0,
      enqueued: TOTAL - completedBefore.length,
    });

    await waitForHandled(t.pool, t.schema, TOTAL, 120_000);
    await sleep(1000);
    expect(await distinctHandled()).toBe(TOTAL);
    // None that the ledger showed completed ran again (nor anything else).
    const { rows: again } = await t.pool.query(
      `SELECT notification_id FROM "${t.schema}".handled
        WHERE notification_id = ANY($1::bigint[])
        GROUP BY notification_id HAVING count(*) > 1`,
      [completedBefore],
    );
    expect(again).toEqual([]);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      sink: { runs: TOTAL, distinct: TOTAL, duplicates: 0 },
    });
    // The re-enqueued ones ran as replays; the others did not.
    expect(
      await scalar(`SELECT count(*)::int AS n FROM "${t.schema}".handled WHERE is_replay`),
    ).toBe(TOTAL - completedBefore.length);
  }, 240_000); // its own waits allow 60 s + 60 s + 120 s: a loaded machine needs them

  it('listen --recover re-enqueues lost jobs and bridges the backlog on start', async () => {
    const before = await scalar(`SELECT count(*)::int AS n FROM "${t.schema}".handled`);
    // 300 rows bridged whose jobs Redis then loses, and 200 rows never bridged.
    const listen = await startListen(t.env);
    await stopGracefully(work);
    await t.pool.query(
      `SELECT "${t.schema}".notify('events', jsonb_build_object('j', g)) FROM generate_series(1, 300) g`,
    );
    await waitFor(
      async () =>
        (await scalar(
          `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
        )) === 0,
      { timeoutMs: 30_000, message: 'the 300 rows bridged' },
    );
    await stopGracefully(listen);
    await deleteKeysWithPrefix(t.redis, t.prefix);
    await t.pool.query(
      `SELECT "${t.schema}".notify('events', jsonb_build_object('k', g)) FROM generate_series(1, 200) g`,
    );

    const recovering = await startListen(t.env, ['--recover']);
    const line = await recovering.waitForOutput(hasMsg('recovered: reconcile --verify finished'));
    expect(line.json).toMatchObject({ bridged: 200, enqueued: 500, alreadyDone: TOTAL });
    work = await startWork(t.env, writeConsumersAgain(), 1);
    await waitForHandled(t.pool, t.schema, before + 500, 60_000);
    await sleep(500);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      sink: { runs: TOTAL + 500, distinct: TOTAL + 500, duplicates: 0 },
    });
    await stopGracefully(recovering);
    await stopGracefully(work);

    const usage = await runCli(['listen', '--recover', '--skip-playback'], { env: t.env });
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/contradict/);
  });
});

function writeConsumersAgain(): string {
  return writeConsumers({
    'consumers.mjs': `${RECORDER}
export default defineConsumer({ id: 'sink', channels: ['events'], concurrency: 20,
  async handle(n) { await record('sink', n); } });`,
  });
}
