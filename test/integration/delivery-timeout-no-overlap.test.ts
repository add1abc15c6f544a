/**
 * A handler that outlives its consumer's `timeout` (150 ms timeout, 600 ms handler): the attempt
 * fails and is retried, its `ctx.signal` aborts at the timeout, and the retry starts only after
 * the first run settled: two runs of one notification never overlap. The same for a batch
 * consumer's `handleBatch`. Real `listen`/`work` processes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  RECORDER,
  removeConsumerDirs,
  sendNotifications,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { waitFor } from '../support/wait.js';
import { runCli } from '../support/cli.js';

let t: TestEnv;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  const result = await runCli(['migrate'], { env: t.env });
  expect(result.code, result.stderr).toBe(0);
  await t.pool.query(
    `CREATE TABLE "${t.schema}".runs (
       consumer text NOT NULL, notification_id bigint NOT NULL, attempt int NOT NULL,
       started_at timestamptz NOT NULL, ended_at timestamptz NOT NULL,
       aborted boolean NOT NULL, reason text)`,
  );
  // Each run records its own start and end (written when it ends), and whether its signal
  // aborted by then. Concurrency 4, so overlapping runs would have the slots to overlap in.
  dir = writeConsumers({
    'slow.mjs': `${RECORDER}
const runsTable = '"' + process.env.PGQ_SCHEMA + '".runs';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function run(consumer, ns, ctx) {
  const started = new Date();
  await sleep(600); // ignores the signal on purpose: the retry must wait for it anyway
  for (const n of ns) {
    await pool.query('INSERT INTO ' + runsTable + ' VALUES ($1, $2, $3, $4, $5, $6, $7)', [
      consumer, n.id, n.attempt, started, new Date(), ctx.signal.aborted,
      ctx.signal.aborted ? String(ctx.signal.reason?.code) : null,
    ]);
  }
}
export default [
  defineConsumer({ id: 'slow', channels: ['slow'], timeout: 150, attempts: 3, backoff: 10,
    concurrency: 4, removeOnFail: true,
    handle: (n, job, ctx) => run('slow', [n], ctx) }),
  defineConsumer({ id: 'slow-batch', channels: ['slow-batch'], timeout: 150, attempts: 2,
    backoff: 10, concurrency: 4, batch: { size: 2, maxWaitMs: 0 },
    handleBatch: (ns, job, ctx) => run('slow-batch', ns, ctx) }),
];`,
  });
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

interface Run {
  consumer: string;
  notification_id: string;
  attempt: number;
  started_at: Date;
  ended_at: Date;
  aborted: boolean;
  reason: string | null;
}

async function runsOf(consumer: string): Promise<Run[]> {
  const { rows } = await t.pool.query<Run>(
    `SELECT consumer, notification_id::text, attempt, started_at, ended_at, aborted, reason
       FROM "${t.schema}".runs WHERE consumer = $1 ORDER BY notification_id, started_at`,
    [consumer],
  );
  return rows;
}

/** Runs of one notification that overlap in time. */
function overlaps(runs: Run[]): string[] {
  const found: string[] = [];
  for (let i = 1; i < runs.length; i++) {
    const [a, b] = [runs[i - 1], runs[i]];
    if (a.notification_id === b.notification_id && b.started_at < a.ended_at) {
      found.push(`${a.notification_id}: attempt ${a.attempt} and ${b.attempt}`);
    }
  }
  return found;
}

describe('a handler that outlives its timeout', () => {
  it('is aborted, retried, and never overlaps its own retry (single and batch)', async () => {
    const work = await startWork(t.env, dir, 2);
    const listen = await startListen(t.env);
    await sendNotifications(t.databaseUrl, t.schema, 6, 2, () => 'slow');
    // One transaction, so the listener claims the four together and packs two jobs of two.
    await t.pool.query(
      `SELECT "${t.schema}".notify('slow-batch', jsonb_build_object('i', g)) FROM generate_series(1, 4) g`,
    );
    // Every attempt times out. slow: 3 attempts of each of the 6. slow-batch: 2 attempts of
    // each batch job, then (failed for good) split into one job per notification, 2 attempts
    // each: every notification ends as a dead letter in the ledger.
    const failed = async (consumer: string): Promise<number> => {
      const { rows } = await t.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM "${t.schema}".deliveries
          WHERE consumer_id = $1 AND status = 'failed' AND last_error LIKE '%timed out%'`,
        [consumer],
      );
      return rows[0].n;
    };
    await waitFor(async () => (await failed('slow')) === 6 && (await failed('slow-batch')) === 4, {
      timeoutMs: 40_000,
      message: 'every notification failed for good by its timeout',
    });
    const expected = { slow: [1, 2, 3], 'slow-batch': [1, 1, 2, 2] };
    for (const consumer of ['slow', 'slow-batch'] as const) {
      const runs = await runsOf(consumer);
      expect(overlaps(runs), consumer).toEqual([]);
      expect(
        runs.every((r) => r.aborted && r.reason === 'PGQ_TIMEOUT'),
        consumer,
      ).toBe(true);
      // Retried (every attempt ran), each run the full 600 ms.
      const byId = new Map<string, number[]>();
      for (const r of runs)
        byId.set(r.notification_id, [...(byId.get(r.notification_id) ?? []), r.attempt]);
      expect(byId.size, consumer).toBe(consumer === 'slow' ? 6 : 4);
      for (const attempts of byId.values()) expect(attempts.sort()).toEqual(expected[consumer]);
      for (const r of runs) {
        expect(r.ended_at.getTime() - r.started_at.getTime()).toBeGreaterThanOrEqual(590);
      }
    }
    await stopGracefully(listen);
    await stopGracefully(work);
  }, 90_000);
});
