/**
 * Issue 5: `pgq-bridge status [--json] [--max-lag S]` reports what Postgres and Redis hold, and
 * exits 3 when the backlog is older than --max-lag.
 */
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  notify,
  PermanentError,
} from '../../src/index.js';
import { runCli } from '../support/cli.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});
afterAll(async () => {
  await t.cleanup();
});

interface Report {
  backlog: { count: number; oldestAgeSeconds: number | null };
  consumers: Array<{
    id: string;
    channels: string[];
    counts: Record<string, number>;
    oldestUnfinishedAgeSeconds: number | null;
    lastSeenWorker: string | null;
  }>;
  healthy: boolean;
}

describe('status', () => {
  it('reports the backlog and per-consumer figures, and exits 3 past --max-lag', async () => {
    const settings = apiSettings(t);
    const worker = createWorker({
      settings,
      workerName: 'test-host:1',
      consumers: [
        defineConsumer({ id: 'ok', channels: ['orders', 'users'], handle: () => undefined }),
        defineConsumer({
          id: 'bad',
          channels: ['orders'],
          handle: () => {
            throw new PermanentError('card declined');
          },
        }),
      ],
    });
    // 'parked' is registered by a worker that then goes away: its jobs stay waiting.
    const parked = createWorker({
      settings,
      workerName: 'gone-host:2',
      consumers: [defineConsumer({ id: 'parked', channels: ['users'], handle: () => undefined })],
    });
    await parked.start();
    await parked.close();
    await worker.start();
    const listener = createListener({ settings });
    await listener.start();
    for (let i = 0; i < 3; i++) await notify(t.pool, 'orders', { i }, { schema: t.schema });
    for (let i = 0; i < 2; i++) await notify(t.pool, 'users', { i }, { schema: t.schema });
    const queue = (id: string) => new Queue(id, { connection: t.redis, prefix: t.prefix });
    const ok = queue('ok');
    const bad = queue('bad');
    const parkedQueue = queue('parked');
    await waitFor(
      async () =>
        (await ok.getCompletedCount()) === 5 &&
        (await bad.getFailedCount()) === 3 &&
        (await parkedQueue.getWaitingCount()) === 2,
      { message: 'jobs handled' },
    );
    await listener.stop();
    await worker.close();

    // Two rows nobody bridges; the older one pretends to be 120 s old.
    await notify(t.pool, 'orders', { late: 1 }, { schema: t.schema });
    const lateId = await notify(t.pool, 'orders', { late: 2 }, { schema: t.schema });
    await t.pool.query(
      `UPDATE "${t.schema}".notifications SET created_at = now() - interval '120 seconds' WHERE id = $1`,
      [lateId],
    );

    const result = await runCli(['status', '--json'], { env: t.env });
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as Report;
    expect(report.backlog.count).toBe(2);
    expect(report.backlog.oldestAgeSeconds).toBeGreaterThanOrEqual(119);
    expect(report.backlog.oldestAgeSeconds).toBeLessThan(200);
    expect(report.healthy).toBe(true);
    const byId = Object.fromEntries(report.consumers.map((c) => [c.id, c]));
    expect(Object.keys(byId)).toEqual(['bad', 'ok', 'parked']);
    expect(byId.ok.channels).toEqual(['orders', 'users']);
    expect(byId.ok.counts).toMatchObject({ completed: 5, failed: 0, waiting: 0, active: 0 });
    expect(byId.ok.oldestUnfinishedAgeSeconds).toBeNull();
    expect(byId.ok.lastSeenWorker).toBe('test-host:1');
    expect(byId.bad.counts).toMatchObject({ completed: 0, failed: 3 });
    expect(byId.parked.counts).toMatchObject({ waiting: 2, completed: 0 });
    expect(byId.parked.oldestUnfinishedAgeSeconds).toBeGreaterThanOrEqual(0);
    expect(byId.parked.lastSeenWorker).toBe('gone-host:2');
    // The figures are Redis' own.
    expect(byId.bad.counts.failed).toBe(await bad.getFailedCount());
    await Promise.all([ok.close(), bad.close(), parkedQueue.close()]);

    const lagging = await runCli(['status', '--json', '--max-lag', '60'], { env: t.env });
    expect(lagging.code, lagging.stderr).toBe(3);
    const lagReport = JSON.parse(lagging.stdout) as Report & { problems: string[] };
    expect(lagReport.healthy).toBe(false);
    expect(lagReport.problems[0]).toMatch(/max lag 60 s/);

    const text = await runCli(['status', '--max-lag', '600'], { env: t.env });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/backlog: 2 unbridged/);
    expect(text.stdout).toMatch(/^parked\s+users\s+2\s+0\s+0\s+0\s+0\s/m);
    expect(text.stdout).toMatch(/healthy/);
  });

  it('asks to run migrate when the schema is missing', async () => {
    const result = await runCli(['status'], { env: { ...t.env, PGQ_SCHEMA: 'pgq_nothing_here' } });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/not installed: run pgq-bridge migrate/);
  });
});
