/**
 * Transactional consumers try to break: a handler that writes one row per notification through
 * `ctx.db` (and sleeps a random few ms), `removeOnComplete: true`, on two `work` processes killed
 * with SIGKILL again and again under a ~250/s stream; meanwhile Redis loses every job (then
 * `reconcile --verify` brings them back), and completed jobs are added again by hand. At the end:
 * exactly one effect row per notification, none missing, none doubled. Real processes, built CLI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import pg from 'pg';
import { runCli, startCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, deleteKeysWithPrefix, type TestEnv } from '../support/env.js';
import {
  hasMsg,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let s: string;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  const result = await runCli(['migrate'], { env: t.env });
  expect(result.code, result.stderr).toBe(0);
  // No unique constraint on purpose: a second commit of one delivery's effect would show.
  await t.pool.query(
    `CREATE TABLE ${s}.effects (notification_id bigint NOT NULL, pid int NOT NULL)`,
  );
  dir = writeConsumers({
    'projection.mjs': `import { defineConsumer } from 'pgq-bridge';
const effects = '"' + process.env.PGQ_SCHEMA + '".effects';
export default defineConsumer({
  id: 'projection', channels: ['orders'], transactional: true, removeOnComplete: true,
  concurrency: 8, attempts: 20, backoff: 50, lockDuration: 2000, stalledInterval: 1000,
  async handle(n, job, { db }) {
    await db.query('INSERT INTO ' + effects + ' VALUES ($1, $2)', [n.id, process.pid]);
    await new Promise((resolve) => setTimeout(resolve, 1 + Math.floor(Math.random() * 5)));
  },
});`,
  });
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

/** ~`perSecond` notifications a second (in small transactions) until `stop` is set. */
async function stream(perSecond: number, stop: { done: boolean }): Promise<number> {
  const client = new pg.Client({ connectionString: t.databaseUrl });
  await client.connect();
  let sent = 0;
  try {
    const tick = 100;
    while (!stop.done) {
      const started = Date.now();
      const n = Math.round((perSecond * tick) / 1000);
      await client.query(
        `SELECT ${s}.notify('orders', jsonb_build_object('i', g)) FROM generate_series(1, $1) g`,
        [n],
      );
      sent += n;
      await sleep(Math.max(0, tick - (Date.now() - started)));
    }
  } finally {
    await client.end();
  }
  return sent;
}

async function scalar(sql: string): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(sql);
  return rows[0].n;
}

async function queueIdle(): Promise<boolean> {
  const queue = new Queue('projection', { connection: t.redis, prefix: t.prefix });
  try {
    const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
    return Object.values(counts).every((n) => n === 0);
  } finally {
    await queue.close();
  }
}

describe('a transactional consumer under kill -9, Redis loss and duplicate jobs', () => {
  it('commits exactly one effect per notification', async () => {
    const listen = await startListen(t.env);
    const workers: CliHandle[] = [await startWork(t.env, dir, 1), await startWork(t.env, dir, 1)];
    const stop = { done: false };
    const streaming = stream(250, stop);
    // 12 s of stream: ~3,000 notifications.
    const streamTimer = setTimeout(() => (stop.done = true), 12_000);

    // Kill -9 one of the two workers every ~1.2 s while the stream runs, restarting it at once
    // (not waiting for it to be ready: a kill may also catch it starting up).
    let kills = 0;
    for (let round = 0; round < 10; round++) {
      await sleep(1200);
      const victim = round % 2;
      workers[victim].killGroup('SIGKILL');
      await workers[victim].waitForExit(10_000);
      kills++;
      if (round === 3) {
        // Redis loses every job (and every other key of this prefix) mid-stream.
        await deleteKeysWithPrefix(t.redis, t.prefix);
      }
      workers[victim] = startCli(['work', '--consumers-dir', dir], { env: t.env });
    }
    const sent = await streaming;
    clearTimeout(streamTimer);
    expect(sent).toBeGreaterThan(2000);
    expect(kills).toBe(10);
    for (const w of workers) {
      await w.waitForOutput(hasMsg('consumer registered; worker started'), 30_000);
    }

    // Jobs lost with Redis come back from their rows (the ledger skips finished ones).
    await waitFor(
      async () =>
        (await scalar(
          `SELECT count(*)::int AS n FROM ${s}.notifications WHERE bridged_at IS NULL`,
        )) === 0,
      {
        timeoutMs: 30_000,
        message: 'every row bridged',
      },
    );
    const verify = await runCli(['reconcile', '--verify'], { env: t.env, timeoutMs: 60_000 });
    expect(verify.code, verify.stderr).toBe(0);
    // A job failed by BullMQ's stalled limit (killed twice mid-run) is a dead letter: replay it.
    const failed = await runCli(['reconcile', '--failed'], { env: t.env, timeoutMs: 60_000 });
    expect(failed.code, failed.stderr).toBe(0);
    const completed = () =>
      scalar(
        `SELECT count(*)::int AS n FROM ${s}.deliveries WHERE consumer_id = 'projection' AND status = 'completed'`,
      );
    await waitFor(async () => (await completed()) === sent, {
      timeoutMs: 90_000,
      intervalMs: 500,
      message: `${sent} completed deliveries`,
    });

    // Completed jobs added again by hand (BullMQ removed them: new jobs to it).
    const { rows } = await t.pool.query(
      `SELECT id::text AS id, channel, payload::text AS payload, context::text AS context,
              created_at FROM ${s}.notifications ORDER BY id LIMIT 100`,
    );
    const queue = new Queue('projection', { connection: t.redis, prefix: t.prefix });
    try {
      await queue.addBulk(
        rows.map((r) => ({
          name: 'orders',
          data: {
            id: r.id,
            channel: r.channel,
            payload: r.payload,
            context: r.context,
            createdAt: r.created_at.toISOString(),
          },
          opts: { jobId: `n${r.id}`, removeOnComplete: true },
        })),
      );
    } finally {
      await queue.close();
    }
    await waitFor(queueIdle, { timeoutMs: 30_000, message: 'the re-added jobs finished' });
    await sleep(500);

    const { rows: summary } = await t.pool.query<{
      rows: number;
      distinct: number;
      missing: number;
    }>(
      `SELECT (SELECT count(*)::int FROM ${s}.effects) AS rows,
              (SELECT count(DISTINCT notification_id)::int FROM ${s}.effects) AS distinct,
              (SELECT count(*)::int FROM ${s}.notifications n
                WHERE NOT EXISTS (SELECT 1 FROM ${s}.effects e WHERE e.notification_id = n.id)) AS missing`,
    );
    console.info(`transactional exactly-once: ${sent} notifications, ${kills} kills`, summary[0]);
    expect(summary[0]).toEqual({ rows: sent, distinct: sent, missing: 0 });
    // The kills did hit handlers mid-run: effects came from more than two processes.
    expect(await scalar(`SELECT count(DISTINCT pid)::int AS n FROM ${s}.effects`)).toBeGreaterThan(
      2,
    );
    for (const w of workers) await stopGracefully(w);
    await stopGracefully(listen);
  }, 240_000);
});
