/**
 * `pgq-bridge consumers list [--json]` shows every consumer with its channels, options, ordering,
 * the worker last seen and its backlog (rows owed but not yet jobs, queue counts, dead letters).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

describe('consumers list', () => {
  it('shows channels, options, ordering, last worker and backlog', async () => {
    const empty = await runCli(['consumers', 'list'], { env: t.env });
    expect(empty.code, empty.stderr).toBe(0);
    expect(empty.stdout).toBe('no consumers registered (start `pgq-bridge work`)\n');

    const dir = writeConsumers({
      'c.mjs': `${RECORDER}
export default [
  defineConsumer({ id: 'mail', channels: ['users', 'orders'], attempts: 9, concurrency: 3,
    ordered: true, timeout: 5000, async handle(n) { await record('mail', n); } }),
  defineConsumer({ id: 'audit', channels: ['orders'], batch: { size: 10, maxWaitMs: 50 },
    async handleBatch(ns) { for (const n of ns) await record('audit', n); } }),
];`,
    });
    const work = await startWork(t.env, dir, 2);
    const pid = work.pid;
    await stopGracefully(work);
    await t.pool.query(
      `SELECT "${t.schema}".notify(c, '{}') FROM unnest(ARRAY['users', 'orders', 'orders']) c`,
    );

    const json = await runCli(['consumers', 'list', '--json'], { env: t.env });
    expect(json.code, json.stderr).toBe(0);
    const listed = JSON.parse(json.stdout) as Record<string, unknown>[];
    expect(listed.map((c) => c.id)).toEqual(['audit', 'mail']);
    const [audit, mail] = listed;
    expect(mail).toMatchObject({
      channels: ['orders', 'users'],
      definitionChannels: ['orders', 'users'],
      jobOptions: { attempts: 9 },
      settings: { ordered: true, concurrency: 3, timeout: 5000 },
      definitions: 1,
      retiredAt: null,
      unbridged: 3,
      failed: 0,
      queue: { waiting: 0, active: 0, failed: 0 },
    });
    expect(mail.lastSeenWorker).toMatch(new RegExp(`:${pid}$`));
    expect(audit).toMatchObject({
      channels: ['orders'],
      batch: { size: 10, maxWaitMs: 50 },
      settings: { ordered: false },
      unbridged: 2,
    });

    const text = await runCli(['consumers', 'list'], { env: t.env });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain('mail\n  channels:  orders, users\n');
    expect(text.stdout).toMatch(
      / {2}options: {3}attempts 9, .*concurrency 3, timeout 5000; ordered\n/,
    );
    expect(text.stdout).toMatch(
      / {2}backlog: {3}3 unbridged, 0 waiting, 0 active, 0 delayed, 0 failed jobs, 0 dead letters/,
    );
    expect(text.stdout).toMatch(
      /audit\n {2}channels: {2}orders\n {2}options: {3}attempts 5, .*batch 10\/50ms.*; unordered/,
    );
  });

  it('refuses bad input with exit 2', async () => {
    const extra = await runCli(['consumers', 'list', 'extra'], { env: t.env });
    expect(extra.code).toBe(2);
    expect(extra.stderr).toMatch(/too many arguments|unknown/);
    const flag = await runCli(['consumers', 'list', '--jsn'], { env: t.env });
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/unknown option '--jsn'/);
  });
});
