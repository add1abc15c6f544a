/**
 * Issue 5: `/metrics` of `listen --metrics-port` and `work --processes 2 --metrics-port` parses as
 * Prometheus text and its counters match what was processed.
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
import { scrape, valueOf } from '../support/prometheus.js';
import { freePort } from '../support/servers.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithRanTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeOpsConsumers();
});

describe('metrics', () => {
  it('counts bridged notifications and handler outcomes per consumer', async () => {
    const dir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default [
  defineConsumer({ id: 'm-ok', channels: ['m'], async handle(n) { await ran('m-ok', n, 'done'); } }),
  defineConsumer({ id: 'm-flaky', channels: ['m'], attempts: 3, backoff: 10,
    async handle(n) { if (n.attempt === 1) throw new Error('flaky'); await ran('m-flaky', n, 'done'); } }),
  defineConsumer({ id: 'm-bad', channels: ['m'],
    async handle(n) { await ran('m-bad', n, 'done'); throw new PermanentError('no'); } }),
];`,
    });
    const [listenPort, workPort] = [await freePort(), await freePort()];
    const work = startCli(
      ['work', '--processes', '2', '--consumers-dir', dir, '--metrics-port', String(workPort)],
      { env: t.env },
    );
    await waitFor(() => logsWith(work, 'consumer registered; worker started').length === 6, {
      timeoutMs: 20_000,
      message: 'two worker processes with three consumers each',
    });
    const listen = await startListening(t.env, ['--metrics-port', String(listenPort)]);
    await sendMany(t, 'm', 6);
    // Every consumer's run, not just one per notification: m-flaky's retry and m-bad may still be
    // on their way when the first consumer is done with all six.
    await waitFor(
      async () => [...(await ranCounts(t, 'done')).values()].reduce((a, b) => a + b, 0) === 18,
      { message: 'handled by all three consumers' },
    );
    const { rows } = await t.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM "${t.schema}".ran`,
    );
    expect(rows[0].n).toBe(18);

    const bridge = await scrape(`http://127.0.0.1:${listenPort}/metrics`);
    expect(valueOf(bridge, 'pgq_bridge_notifications_bridged_total')).toBe(6);
    expect(valueOf(bridge, 'pgq_bridge_jobs_enqueued_total')).toBe(18);
    expect(valueOf(bridge, 'pgq_bridge_bridge_batch_size_sum')).toBe(6);
    expect(valueOf(bridge, 'pgq_bridge_bridge_batch_size_count')).toBeGreaterThanOrEqual(1);
    expect(valueOf(bridge, 'pgq_bridge_bridge_latency_seconds_count')).toBe(6);
    const latency = valueOf(bridge, 'pgq_bridge_bridge_latency_seconds_sum') / 6;
    expect(latency).toBeGreaterThanOrEqual(0);
    expect(latency).toBeLessThan(5);
    expect(valueOf(bridge, 'pgq_bridge_backlog_rows')).toBe(0);
    expect(valueOf(bridge, 'pgq_bridge_backlog_oldest_age_seconds')).toBe(0);
    const usage = valueOf(bridge, 'pgq_bridge_notification_queue_usage_ratio');
    expect(usage).toBeGreaterThanOrEqual(0);
    expect(usage).toBeLessThan(0.5);

    // The supervisor sums its children.
    await waitFor(
      async () => {
        const w = await scrape(`http://127.0.0.1:${workPort}/metrics`);
        return valueOf(w, 'pgq_bridge_jobs_failed_total', { consumer: 'm-bad' }) === 6;
      },
      { message: 'failures counted' },
    );
    const worker = await scrape(`http://127.0.0.1:${workPort}/metrics`);
    const of = (name: string, consumer: string) => valueOf(worker, name, { consumer });
    expect(of('pgq_bridge_jobs_completed_total', 'm-ok')).toBe(6);
    expect(of('pgq_bridge_jobs_completed_total', 'm-flaky')).toBe(6);
    expect(of('pgq_bridge_jobs_retried_total', 'm-flaky')).toBe(6);
    expect(of('pgq_bridge_jobs_failed_total', 'm-bad')).toBe(6);
    expect(of('pgq_bridge_handler_duration_seconds_count', 'm-ok')).toBe(6);
    expect(of('pgq_bridge_handler_duration_seconds_count', 'm-flaky')).toBe(12);
    expect(valueOf(worker, 'pgq_bridge_worker_processes')).toBe(2);
    expect(valueOf(worker, 'pgq_bridge_worker_restarts')).toBe(0);

    // Without a listener, the backlog shows.
    listen.kill('SIGTERM');
    expect((await listen.waitForExit()).code).toBe(0);
    await sendMany(t, 'm', 2);
    await t.pool.query(
      `UPDATE "${t.schema}".notifications SET created_at = now() - interval '30 seconds'
        WHERE bridged_at IS NULL`,
    );
    const lagging = await scrape(`http://127.0.0.1:${workPort}/metrics`);
    expect(valueOf(lagging, 'pgq_bridge_backlog_rows')).toBe(2);
    expect(valueOf(lagging, 'pgq_bridge_backlog_oldest_age_seconds')).toBeGreaterThanOrEqual(29);

    const notFound = await fetch(`http://127.0.0.1:${workPort}/nothing`);
    expect(notFound.status).toBe(404);
    work.kill('SIGTERM');
    expect((await work.waitForExit()).code).toBe(0);
  });
});
