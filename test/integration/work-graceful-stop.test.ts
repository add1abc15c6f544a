/**
 * Issue 2: SIGINT/SIGTERM stop `listen` and `work` gracefully with exit code 0, and a handler in
 * flight finishes (and its ledger row is written) before `work` exits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { notify } from '../../src/index.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  hasMsg,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
let dir: string;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
  dir = writeConsumers({
    'slow.mjs': `${RECORDER}
export default defineConsumer({ id: 'slow', channels: ['orders'],
  async handle(n) {
    await record('slow', n, 'start');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await record('slow', n, 'done');
  } });`,
  });
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

async function infos(): Promise<string[]> {
  const { rows } = await t.pool.query<{ info: string }>(
    `SELECT info FROM "${t.schema}".handled ORDER BY seq`,
  );
  return rows.map((r) => r.info);
}

describe('graceful stop', () => {
  it.each(['SIGINT', 'SIGTERM'] as const)('listen exits 0 on %s', async (signal) => {
    const listen = await startListen(t.env);
    await stopGracefully(listen, signal);
    expect(listen.logs().some(hasMsg('stopped'))).toBe(true);
  });

  it.each(['SIGTERM', 'SIGINT'] as const)(
    'work lets the handler in flight finish on %s, writes its ledger row, exits 0',
    async (signal) => {
      await t.pool.query(`TRUNCATE "${t.schema}".handled`);
      const work = await startWork(t.env, dir, 1);
      const listen = await startListen(t.env);
      const id = await notify(t.pool, 'orders', { signal }, { schema: t.schema });
      await waitFor(async () => (await infos()).includes('start'), {
        message: 'the slow handler started',
      });
      const signalled = Date.now();
      await stopGracefully(work, signal);
      // It waited for the handler (1.5 s) instead of abandoning it.
      expect(Date.now() - signalled).toBeGreaterThanOrEqual(1000);
      expect(await infos()).toEqual(['start', 'done']);
      const { rows } = await t.pool.query(
        `SELECT status, attempts FROM "${t.schema}".deliveries
          WHERE consumer_id = 'slow' AND notification_id = $1`,
        [id],
      );
      expect(rows).toEqual([{ status: 'completed', attempts: 1 }]);
      await stopGracefully(listen, signal);
    },
  );
});
