/**
 * Tracing is optional: with `@opentelemetry/api` absent (hidden from module resolution in every
 * process by test/support/otel/hide-api.mjs, exactly as a missing package fails), `notify`,
 * `listen` and `work` deliver as before, and each process tries the import once (cached), only
 * when it first needs it. A SQL writer's trace settings are still stored; nobody reads them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_BIN, REPO_ROOT, runNode, startNode, type CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  migrateWithRanTable,
  RAN,
  ranCounts,
  removeOpsConsumers,
  writeOpsConsumers,
} from '../support/ops.js';
import { waitFor } from '../support/wait.js';

const HIDE = join(REPO_ROOT, 'test/support/otel/hide-api.mjs');

let t: TestEnv;
let hideLog: string;
const running: CliHandle[] = [];

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithRanTable(t);
});
afterAll(async () => {
  for (const p of running) {
    p.kill('SIGTERM');
    await p.waitForExit();
  }
  await t.cleanup();
  removeOpsConsumers();
});

describe('without @opentelemetry/api', () => {
  it('notify, listen and work deliver as before and load nothing', async () => {
    const dir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default [
  defineConsumer({ id: 'plain', channels: ['orders'], async handle(n) { await ran('plain', n, 'done'); } }),
  defineConsumer({ id: 'plain-batch', channels: ['orders'], batch: { size: 10, maxWaitMs: 100 },
    async handleBatch(ns) { for (const n of ns) await ran('plain-batch', n, 'done'); } }),
];`,
    });
    hideLog = join(dir, 'hidden.log');
    const env = { ...t.env, PGQ_TEST_HIDE_LOG: hideLog };
    const work = startNode(['--import', HIDE, CLI_BIN, 'work', '--consumers-dir', dir], { env });
    running.push(work);
    await waitFor(
      async () => (await t.pool.query(`SELECT 1 FROM "${t.schema}".consumers`)).rowCount === 2,
      { timeoutMs: 30_000, message: 'consumers registered' },
    );
    const listen = startNode(['--import', HIDE, CLI_BIN, 'listen'], { env });
    running.push(listen);
    await listen.waitForOutput(/LISTEN connection ready/);

    // The TypeScript notify() (the CLI's), twice: the second must not try the import again.
    const ids: string[] = [];
    for (const payload of ['{"a":1}', '{"a":2}']) {
      const result = await runNode(['--import', HIDE, CLI_BIN, 'notify', 'orders', payload], {
        env,
      });
      expect(result.code, result.stderr).toBe(0);
      ids.push(result.stdout.trim());
    }
    // A SQL writer's settings are stored even so.
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(
        `SET LOCAL pgq_bridge.traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'`,
      );
      const res = await client.query<{ id: string }>(
        `SELECT "${t.schema}".notify('orders', '{"a":3}')::text AS id`,
      );
      ids.push(res.rows[0].id);
      await client.query('COMMIT');
    } finally {
      client.release();
    }

    await waitFor(
      async () => {
        const { rows } = await t.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM "${t.schema}".ran WHERE phase = 'done'`,
        );
        return rows[0].n >= 6;
      },
      { timeoutMs: 30_000, message: 'both consumers handled the three notifications' },
    );
    const counts = await ranCounts(t, 'done');
    expect([...counts.keys()].sort()).toEqual([...ids].sort());
    expect([...counts.values()]).toEqual([2, 2, 2]);

    const stored = await t.pool.query<{ traceparent: string | null }>(
      `SELECT traceparent FROM "${t.schema}".notifications ORDER BY id`,
    );
    expect(stored.rows.map((r) => r.traceparent)).toEqual([
      null,
      null,
      '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    ]);

    // Who tried to load the API: each process at most once (the outcome is cached), and only
    // the processes that needed it: the two notify runs, the listener (a batch with rows), the
    // worker (a job).
    expect(existsSync(hideLog)).toBe(true);
    const lines = readFileSync(hideLog, 'utf8').trim().split('\n');
    const byPid = new Map<string, number>();
    for (const line of lines) {
      const [pid, specifier] = line.split(' ');
      expect(specifier).toBe('@opentelemetry/api');
      byPid.set(pid, (byPid.get(pid) ?? 0) + 1);
    }
    expect([...byPid.values()].every((n) => n === 1)).toBe(true);
    expect(byPid.size).toBeGreaterThanOrEqual(4);
  });
});
