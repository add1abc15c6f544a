/**
 * A worker killed (kill -9) in the middle of a handler: with the consumer's `lockDuration` and
 * `stalledInterval`, another worker takes the job over within seconds instead of BullMQ's default
 * minute, and the notification is handled (nothing lost).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
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
import { runCli } from '../support/cli.js';

let t: TestEnv;
let dir: string;

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  dir = writeConsumers({
    'slow.mjs': `${RECORDER}
export default defineConsumer({
  id: 'slow', channels: ['orders'], lockDuration: 2000, stalledInterval: 1000,
  async handle(n) {
    await record('slow', n, 'started');
    // The first process to get the job hangs here until it is killed.
    if (process.env.HANG === '1') await new Promise(() => {});
  },
});`,
  });
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

it('a job of a killed worker runs again within seconds on another worker', async () => {
  const listen = await startListen(t.env);
  const hanging = await startWork({ ...t.env, HANG: '1' }, dir, 1);
  const sent = await runCli(['notify', 'orders', '{"n":1}'], { env: t.env });
  expect(sent.code, sent.stderr).toBe(0);
  const startedBy = async () =>
    (await t.pool.query<{ pid: number }>(`SELECT pid FROM "${t.schema}".handled ORDER BY seq`))
      .rows;
  await waitFor(async () => (await startedBy()).length === 1, {
    timeoutMs: 20_000,
    message: 'the first worker started the handler',
  });
  hanging.kill('SIGKILL');
  await hanging.waitForExit(10_000);
  const killedAt = Date.now();

  const healthy = await startWork(t.env, dir, 1);
  await waitFor(async () => (await startedBy()).length === 2, {
    timeoutMs: 20_000,
    message: 'a second worker took the stalled job over',
  });
  const tookOverMs = Date.now() - killedAt;
  // BullMQ's defaults (30 s lock, 30 s stalled check) would take 30-60 s.
  expect(tookOverMs).toBeLessThan(15_000);
  const rows = await startedBy();
  expect(rows[1].pid).not.toBe(rows[0].pid);
  await waitFor(
    async () => {
      const { rows: ledger } = await t.pool.query<{ status: string }>(
        `SELECT status FROM "${t.schema}".deliveries WHERE consumer_id = 'slow'`,
      );
      return ledger.length === 1 && ledger[0].status === 'completed';
    },
    { timeoutMs: 10_000, message: 'the ledger records the delivery completed' },
  );
  await stopGracefully(healthy);
  await stopGracefully(listen);
});
