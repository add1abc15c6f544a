/**
 * Issue 5: `pgq-bridge start` runs listen + work + board in one process: a notification is
 * bridged and handled, and the board's /metrics counts both sides.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { RAN, ranCounts, removeOpsConsumers, sendMany, writeOpsConsumers } from '../support/ops.js';
import { scrape, valueOf } from '../support/prometheus.js';
import { freePort } from '../support/servers.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
beforeAll(() => {
  t = createTestEnv();
});
afterAll(async () => {
  await t.cleanup();
  removeOpsConsumers();
});

describe('start', () => {
  it('bridges and handles a notification in one process, board included', async () => {
    const dir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default defineConsumer({ id: 'all-in-one', channels: ['aio'],
  async handle(n) { await ran('all-in-one', n, 'done'); } });`,
    });
    const port = await freePort();
    const app = startCli(['start', '--migrate', '--consumers-dir', dir, '--port', String(port)], {
      env: t.env,
    });
    const started = await app.waitForOutput(
      (l) => l.json?.msg === 'started: listen + work + board',
    );
    expect(started.json?.consumers).toEqual(['all-in-one']);
    await t.pool.query(
      `CREATE TABLE "${t.schema}".ran (
         seq bigserial PRIMARY KEY, consumer text NOT NULL, notification_id bigint NOT NULL,
         phase text NOT NULL, pid int NOT NULL)`,
    );
    const [id] = await sendMany(t, 'aio', 1);
    await waitFor(async () => (await ranCounts(t, 'done')).get(id) === 1, {
      message: 'handled by the all-in-one process',
    });
    const { rows } = await t.pool.query<{ pid: number }>(`SELECT pid FROM "${t.schema}".ran`);
    expect(rows[0].pid).toBe(app.pid);

    const base = `http://127.0.0.1:${port}/`;
    expect((await fetch(`${base}healthz`)).status).toBe(200);
    expect((await fetch(base)).status).toBe(200);
    const metrics = await scrape(`${base}metrics`);
    expect(valueOf(metrics, 'pgq_bridge_notifications_bridged_total')).toBe(1);
    expect(valueOf(metrics, 'pgq_bridge_jobs_completed_total', { consumer: 'all-in-one' })).toBe(1);
    expect(
      valueOf(metrics, 'pgq_bridge_queue_jobs', { consumer: 'all-in-one', state: 'completed' }),
    ).toBe(1);

    app.kill('SIGTERM');
    expect((await app.waitForExit()).code).toBe(0);
  });
});
