/**
 * A consumer whose finished jobs BullMQ removes at once (`removeOnComplete: true`) must have the
 * outcome in the delivery ledger before its job disappears: otherwise a worker killed between the
 * two leaves neither, and `reconcile --verify` runs the notification again. The test watches the
 * job's key in Redis, SIGKILLs the worker the moment it is gone, and checks the ledger, then
 * that `reconcile --verify` and a new worker do not run it again. Single and batch consumers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { notify } from '../../src/index.js';
import { runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  handledCount,
  handledSummary,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  dir = writeConsumers({
    'consumers.mjs': `${RECORDER}
export default [
  defineConsumer({ id: 'gone', channels: ['single'], removeOnComplete: true,
    async handle(n) { await record('gone', n); } }),
  defineConsumer({ id: 'gone-batch', channels: ['batch'], removeOnComplete: true,
    batch: { size: 5, maxWaitMs: 10 },
    async handleBatch(ns) { for (const n of ns) await record('gone-batch', n); } }),
];`,
  });
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

/** Keys of the consumer's job hashes (`<prefix>:<queue>:<job id>`) whose id starts with `idStart`. */
async function jobKeys(queue: string, idStart: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await t.redis.scan(
      cursor,
      'MATCH',
      `${t.prefix}:${queue}:${idStart}*`,
      'COUNT',
      1000,
    );
    cursor = next;
    // Not the job's sub-keys (":logs", ":lock").
    found.push(...keys.filter((k) => k.split(':').length === 3));
  } while (cursor !== '0');
  return found;
}

async function ledgerCompleted(consumer: string, ids: string[]): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM "${t.schema}".deliveries
      WHERE consumer_id = $1 AND notification_id = ANY($2::bigint[]) AND status = 'completed'`,
    [consumer, ids],
  );
  return rows[0].n;
}

describe('a job removed as soon as it completes', () => {
  it.each([
    { consumer: 'gone', channel: 'single', count: 1, idStart: 'n' },
    { consumer: 'gone-batch', channel: 'batch', count: 5, idStart: 'b' },
  ])(
    '$consumer: its outcome is in the ledger before the job leaves Redis; a kill then reruns nothing',
    async ({ consumer, channel, count, idStart }) => {
      const listen = await startListen(t.env);
      const work = await startWork(t.env, dir, 2, ['--worker']);
      const before = await handledCount(t.pool, t.schema);
      const ids: string[] = [];
      for (let i = 0; i < count; i++) {
        ids.push(await notify(t.pool, channel, { i }, { schema: t.schema }));
      }
      // The handler ran (its rows are in), so the job exists until BullMQ removes it.
      await waitFor(async () => (await handledCount(t.pool, t.schema)) >= before + count, {
        timeoutMs: 15_000,
        intervalMs: 0,
        message: `${count} handled`,
      });
      // Poll as fast as Redis answers; kill the worker the moment the job is gone. Without the
      // ledger-first write, the outcome would still sit in the 50 ms batch here.
      const gone =
        idStart === 'n'
          ? async () => (await t.redis.exists(`${t.prefix}:${consumer}:n${ids[0]}`)) === 0
          : async () => (await jobKeys(consumer, idStart)).length === 0;
      await waitFor(gone, {
        timeoutMs: 15_000,
        intervalMs: 0,
        message: 'the job removed on completion',
      });
      work.kill('SIGKILL');
      await work.waitForExit(10_000);
      expect(await ledgerCompleted(consumer, ids)).toBe(count);

      const verify = await runCli(['reconcile', '--verify', '--consumers', consumer], {
        env: t.env,
      });
      expect(verify.code, verify.stderr).toBe(0);
      const again = await startWork(t.env, dir, 2, ['--worker']);
      await sleep(1000);
      const summary = await handledSummary(t.pool, t.schema);
      expect(summary[consumer]).toMatchObject({ duplicates: 0 });
      await stopGracefully(again);
      await stopGracefully(listen);
    },
  );
});
