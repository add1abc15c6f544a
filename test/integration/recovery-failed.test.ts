/**
 * Issue 3: a consumer's handler fails permanently for 100 notifications (dead letters); the bug
 * is fixed; `reconcile --failed` replays all 100, with `isReplay` true, and nothing else. Among
 * the 100: some whose failed job was removed from Redis (re-added from the row) and some whose
 * failure never reached the ledger (a worker died before writing it; found in BullMQ's failed set).
 */
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
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

let t: TestEnv;
let work: CliHandle;
let listen: CliHandle;
let queue: Queue;

async function scalar(sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(sql, params);
  return rows[0].n;
}

async function reconcileJson(args: string[]): Promise<Record<string, number>> {
  const result = await runCli(['reconcile', ...args, '--json'], { env: t.env, timeoutMs: 60_000 });
  expect(result.code, result.stderr + result.stdout).toBe(0);
  return JSON.parse(result.stdout.trim().split('\n').pop()!) as Record<string, number>;
}

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  await t.pool.query(`CREATE TABLE "${t.schema}".switch (fixed boolean NOT NULL)`);
  await t.pool.query(`INSERT INTO "${t.schema}".switch VALUES (false)`);
  const dir = writeConsumers({
    'consumers.mjs': `${RECORDER}
const switchTable = '"' + process.env.PGQ_SCHEMA + '".switch';
export default defineConsumer({ id: 'picky', channels: ['tasks'], concurrency: 10,
  attempts: 3, backoff: { type: 'fixed', delay: 50 },
  async handle(n) {
    const { rows } = await pool.query('SELECT fixed FROM ' + switchTable);
    if (n.payload.bad && !rows[0].fixed) throw new PermanentError('cannot handle ' + n.id);
    await record('picky', n);
  } });`,
  });
  work = await startWork(t.env, dir, 1);
  listen = await startListen(t.env);
  queue = new Queue('picky', { connection: t.redis, prefix: t.prefix });
});

afterAll(async () => {
  await queue?.close();
  await t.cleanup();
  removeConsumerDirs();
});

describe('reconcile --failed', () => {
  it('replays the 100 dead letters once the bug is fixed, as replays', async () => {
    await t.pool.query(
      `SELECT "${t.schema}".notify('tasks', jsonb_build_object('i', g, 'bad', g % 3 = 0))
         FROM generate_series(1, 300) g`,
    );
    await waitForHandled(t.pool, t.schema, 200, 60_000);
    await waitFor(
      async () =>
        (await scalar(
          `SELECT count(*)::int AS n FROM "${t.schema}".deliveries WHERE status = 'failed'`,
        )) === 100,
      { timeoutMs: 30_000, message: '100 failed deliveries in the ledger' },
    );
    const { rows: bad } = await t.pool.query<{ id: string }>(
      `SELECT n.id::text AS id FROM "${t.schema}".notifications n
        WHERE (n.payload->>'bad')::boolean ORDER BY n.id`,
    );
    expect(bad).toHaveLength(100);
    expect(await queue.getJobCountByTypes('failed')).toBe(100);
    const { rows: ledger } = await t.pool.query(
      `SELECT attempts, last_error FROM "${t.schema}".delivery_status
        WHERE consumer_id = 'picky' AND notification_id = $1`,
      [bad[0].id],
    );
    expect(ledger).toEqual([{ attempts: 1, last_error: `cannot handle ${bad[0].id}` }]);

    // 10 failed jobs removed from Redis (removeOnFail, a cleanup), 10 failures the ledger missed.
    for (const { id } of bad.slice(0, 10)) expect(await queue.remove(`n${id}`)).toBe(1);
    await t.pool.query(
      `DELETE FROM "${t.schema}".deliveries WHERE consumer_id = 'picky'
          AND notification_id = ANY($1::bigint[])`,
      [bad.slice(10, 20).map((r) => r.id)],
    );

    await t.pool.query(`UPDATE "${t.schema}".switch SET fixed = true`);
    const dry = await reconcileJson(['--failed', '--dry-run']);
    expect(dry).toMatchObject({ dryRun: true, replayed: 100, enqueued: 100, unreplayable: 0 });
    await sleep(300);
    expect(await queue.getJobCountByTypes('failed')).toBe(90);

    // Plain reconcile reports dead letters but leaves them alone.
    const plain = await reconcileJson(['--verify']);
    expect(plain).toMatchObject({ enqueued: 0, replayed: 0, deadLetters: 90 });

    const summary = await reconcileJson(['--failed', '--consumers', 'picky']);
    expect(summary).toMatchObject({ replayed: 100, enqueued: 100, unreplayable: 0 });
    await waitForHandled(t.pool, t.schema, 300, 60_000);
    await sleep(500);

    const { rows: handled } = await t.pool.query<{ id: string; is_replay: boolean; n: number }>(
      `SELECT notification_id::text AS id, bool_and(is_replay) AS is_replay, count(*)::int AS n
         FROM "${t.schema}".handled GROUP BY notification_id ORDER BY notification_id`,
    );
    expect(handled).toHaveLength(300);
    expect(handled.every((h) => h.n === 1)).toBe(true);
    const replayed = handled.filter((h) => h.is_replay).map((h) => h.id);
    expect(replayed).toEqual(bad.map((r) => r.id));
    expect(
      await scalar(
        `SELECT count(*)::int AS n FROM "${t.schema}".deliveries WHERE status = 'completed'`,
      ),
    ).toBe(300);
    expect(await queue.getJobCountByTypes('failed')).toBe(0);

    const again = await reconcileJson(['--failed']);
    expect(again).toMatchObject({ replayed: 0, enqueued: 0 });

    const unknown = await runCli(['reconcile', '--consumers', 'nobody'], { env: t.env });
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown consumer: nobody/);

    await stopGracefully(listen);
    await stopGracefully(work);
  });
});
