/**
 * Issue 5, logging: every log line of `work` about a notification carries its id, channel and
 * consumer (successes at debug level, retries at warn, dead letters at error).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  logsWith,
  migrateWithRanTable,
  RAN,
  ranCounts,
  removeOpsConsumers,
  sendMany,
  startListening,
  writeOpsConsumers,
} from '../support/ops.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv({ extraEnv: { LOG_LEVEL: 'debug' } });
  await migrateWithRanTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeOpsConsumers();
});

describe('logging', () => {
  it('names the notification, its channel and the consumer on every line about one', async () => {
    const dir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default [
  defineConsumer({ id: 'log-flaky', channels: ['logs'], attempts: 2, backoff: 10,
    async handle(n) { if (n.attempt === 1) throw new Error('first try fails'); await ran('log-flaky', n, 'done'); } }),
  defineConsumer({ id: 'log-dead', channels: ['logs'],
    async handle(n) { await ran('log-dead', n, 'done'); throw new PermanentError('never'); } }),
];`,
    });
    const work = startCli(['work', '--consumers-dir', dir], { env: t.env });
    await waitFor(() => logsWith(work, 'consumer registered; worker started').length === 2, {
      message: 'work ready',
    });
    const listen = await startListening(t.env);
    const [id] = await sendMany(t, 'logs', 1);
    await waitFor(async () => (await ranCounts(t, 'done')).get(id) === 2, { message: 'handled' });
    await waitFor(() => logsWith(work, 'handled').length === 1, { message: 'handled logged' });

    const about = work.logs().filter((l) => 'notificationId' in l);
    expect(about.length).toBeGreaterThanOrEqual(3);
    for (const line of about) {
      expect(line, JSON.stringify(line)).toMatchObject({ notificationId: id, channel: 'logs' });
      expect(['log-flaky', 'log-dead']).toContain(line.consumer);
    }
    expect(logsWith(work, 'handler failed; will retry')[0]).toMatchObject({
      consumer: 'log-flaky',
      attempt: 1,
      level: 40,
    });
    expect(logsWith(work, 'handler failed for good (job kept as failed)')[0]).toMatchObject({
      consumer: 'log-dead',
      level: 50,
    });
    expect(logsWith(work, 'handled')[0]).toMatchObject({ consumer: 'log-flaky', attempt: 2 });
    work.kill('SIGTERM');
    listen.kill('SIGTERM');
    expect((await work.waitForExit()).code).toBe(0);
    expect((await listen.waitForExit()).code).toBe(0);
  });
});
