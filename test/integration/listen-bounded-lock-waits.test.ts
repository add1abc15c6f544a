/**
 * Issue 12, hole 8: one session holding the subscriptions advisory lock (a `psql` left in a
 * transaction) used to stop all bridging silently: the listener's batch and a worker's
 * registration waited for ever. Every wait is bounded now: they give up after their session's
 * lock_timeout, log who holds the lock, retry, and carry on once it is released. `migrate` waits
 * for its lock the same way. Each pgq-bridge session runs with the limits of its role.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPool, SESSION_LIMITS } from '../../src/db/pool.js';
import { silentLogger } from '../../src/log.js';
import { startCli } from '../support/cli.js';
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
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

/** A duration as Postgres shows a setting ('0', '500ms', '10s', '2min') in ms. */
function ms(text: string): number {
  const m = /^(\d+)(ms|s|min|h)?$/.exec(text);
  if (!m) throw new Error(`unexpected duration ${text}`);
  return Number(m[1]) * { ms: 1, s: 1000, min: 60_000, h: 3_600_000 }[m[2] ?? 'ms']!;
}

/** A psql-like session holding an advisory lock in an open transaction. */
async function holdLock(key: string): Promise<{ pid: number; release: () => Promise<void> }> {
  const client = new pg.Client({ connectionString: t.databaseUrl, application_name: 'psql-gate' });
  await client.connect();
  await client.query('BEGIN');
  await client.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [key]);
  const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  return {
    pid: rows[0].pid,
    release: async () => {
      await client.query('COMMIT');
      await client.end();
    },
  };
}

describe('bounded lock waits', () => {
  it('a held subscriptions lock is logged with its holder and retried, then bridging carries on', async () => {
    const dir = writeConsumers({
      'x.mjs': `${RECORDER}
export default defineConsumer({ id: 'x', channels: ['a'], async handle(n) { await record('x', n); } });`,
    });
    await stopGracefully(await startWork(t.env, dir, 1));
    const listen = await startListen(t.env, ['--reconnect-delay', '0.2']);
    const gate = await holdLock(`pgq_bridge.subscriptions:${t.schema}`);
    const work = startCli(['work', '--consumers-dir', dir], { env: t.env });
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT "${t.schema}".notify('a', '{}')::text AS id`,
    );
    const blocked = (line: { json?: Record<string, unknown> }): boolean =>
      hasMsg('bridging a batch failed; retrying')(line) &&
      new RegExp(
        `gave up waiting for the subscriptions lock .*held by pid ${gate.pid} \\(psql-gate, user \\S+, idle in transaction for \\d+ s\\)`,
      ).test(String(line.json?.err));
    const first = await listen.waitForOutput(blocked, 30_000);
    // It keeps trying (it does not hang on the lock, nor give up).
    await listen.waitForOutput(blocked, 30_000, listen.lines().indexOf(first) + 1);
    await work.waitForOutput(
      (line) =>
        hasMsg('registering consumers failed; retrying')(line) &&
        String(line.json?.err).includes(`held by pid ${gate.pid} (psql-gate`),
      30_000,
    );
    expect(listen.exited).toBe(false);

    await gate.release();
    await work.waitForOutput(hasMsg('consumer registered; worker started'), 30_000);
    await waitFor(
      async () =>
        (
          await t.pool.query(`SELECT 1 FROM "${t.schema}".handled WHERE notification_id = $1`, [
            rows[0].id,
          ])
        ).rowCount === 1,
      { timeoutMs: 30_000, message: 'the notification handled after the lock was released' },
    );
    await stopGracefully(work);
    await stopGracefully(listen);
  });

  it('migrate waits for its lock a bounded time, says who holds it, and retries', async () => {
    const gate = await holdLock(`pgq_bridge.migrate:${t.schema}`);
    const migrate = startCli(['migrate'], { env: t.env });
    const waited = await migrate.waitForOutput(
      hasMsg('migration waited too long for a lock; rolled back, retrying'),
      30_000,
    );
    expect(String(waited.json?.err)).toMatch(
      new RegExp(`the migration lock .*held by pid ${gate.pid} \\(psql-gate`),
    );
    await gate.release();
    expect(await migrate.waitForExit(30_000)).toEqual({ code: 0, signal: null });
  });

  it('sessions run with the limits of their role', async () => {
    for (const role of ['listener', 'worker', 'operate', 'migrate'] as const) {
      const pool = createPool({ connectionString: t.databaseUrl, max: 1 }, silentLogger(), role);
      try {
        const { rows } = await pool.query<{ s: string; l: string; i: string }>(
          `SELECT current_setting('statement_timeout') AS s, current_setting('lock_timeout') AS l,
                  current_setting('idle_in_transaction_session_timeout') AS i`,
        );
        const limits = SESSION_LIMITS[role];
        expect([ms(rows[0].s), ms(rows[0].l), ms(rows[0].i)], role).toEqual([
          limits.statementMs,
          limits.lockMs,
          limits.idleInTransactionMs,
        ]);
      } finally {
        await pool.end();
      }
    }
  });

  it('a session frozen in a transaction is ended by idle_in_transaction_session_timeout', async () => {
    const pool = createPool(
      { connectionString: t.databaseUrl, max: 1, idle_in_transaction_session_timeout: 300 },
      silentLogger(),
      'worker',
    );
    const client = await pool.connect();
    client.on('error', () => undefined);
    try {
      await client.query('BEGIN');
      await client.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [
        `pgq_bridge.subscriptions:${t.schema}`,
      ]);
      await new Promise((r) => setTimeout(r, 1000));
      await expect(client.query('SELECT 1')).rejects.toThrow(
        /idle-in-transaction|terminat|connection error/i,
      );
      // The lock went with the session.
      const free = await t.pool.query<{ ok: boolean }>(
        `SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS ok`,
        [`pgq_bridge.subscriptions:${t.schema}`],
      );
      expect(free.rows[0].ok).toBe(true);
    } finally {
      client.release(true);
      await pool.end();
    }
  });
});
