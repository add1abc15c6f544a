/**
 * Ordered + transactional with real processes (issue 13): 8 writers send keyed notifications
 * (`notify(channel, payload, key)`, 40 keys at random) while an ordered transactional consumer
 * writes one effect per notification through `ctx.db`, with random handler times and transient
 * failures thrown after the write (rolled back), on two `work` processes; one is killed -9
 * mid-stream. Afterwards: every notification's effect committed exactly once, per key in id
 * order (= commit order), and no two handler runs of one key overlapped.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { removeConsumerDirs, startListen, startWork, writeConsumers } from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';
import { expectOneAtATime, runWriters } from '../support/ordering.js';

const KEYS = 40;
const WRITERS = 8;
const PER_WRITER = 60;

let t: TestEnv;
let s: string;
let dir: string;
const handles: CliHandle[] = [];

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  const migrated = await runCli(['migrate'], { env: t.env });
  expect(migrated.code, migrated.stderr).toBe(0);
  await t.pool.query(`
    CREATE TABLE ${s}.effects (
      seq bigserial PRIMARY KEY, notification_id bigint NOT NULL, key text NOT NULL);
    CREATE TABLE ${s}.runs (
      seq bigserial PRIMARY KEY, notification_id bigint NOT NULL, key text NOT NULL,
      pid int NOT NULL, started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      ended_at timestamptz);
  `);
  dir = writeConsumers({
    'projection.mjs': `
import pg from 'pg';
import { defineConsumer } from 'pgq-bridge';
// Runs are logged outside the transaction (they survive its rollback).
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 8 });
pool.on('error', () => {});
const s = '"' + process.env.PGQ_SCHEMA + '"';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export default defineConsumer({
  id: 'projection', channels: ['accounts'], ordered: true, transactional: true, concurrency: 6,
  attempts: 20, backoff: { type: 'fixed', delay: 100 }, lockDuration: 2000, stalledInterval: 1000,
  async handle(n, _job, ctx) {
    const { rows } = await pool.query(
      'INSERT INTO ' + s + '.runs (notification_id, key, pid) VALUES ($1, $2, $3) RETURNING seq',
      [n.id, n.key, process.pid]);
    try {
      await ctx.db.query('INSERT INTO ' + s + '.effects (notification_id, key) VALUES ($1, $2)',
        [n.id, n.key]);
      await sleep(Math.random() * 12);
      if (Math.random() < 0.15) throw new Error('transient failure after the write');
    } finally {
      await pool.query('UPDATE ' + s + '.runs SET ended_at = clock_timestamp() WHERE seq = $1',
        [rows[0].seq]);
    }
  },
});`,
  });
});

afterAll(async () => {
  for (const h of handles) if (!h.exited) h.killGroup('SIGKILL');
  await t.cleanup();
  removeConsumerDirs();
});

/** The writers: keyed notifications, one per transaction, to random keys. */
function writeKeyed(): Promise<void> {
  return runWriters(t.databaseUrl, WRITERS, PER_WRITER, (client) =>
    client.query(`SELECT ${s}.notify('accounts', '{}'::jsonb, $1)`, [
      `account:${1 + Math.floor(Math.random() * KEYS)}`,
    ]),
  );
}

async function effectCount(): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${s}.effects`);
  return rows[0].n;
}

it('commits each effect exactly once, per key in order, one run of a key at a time, through kill -9 of a worker', async () => {
  handles.push(await startListen(t.env));
  const a = await startWork(t.env, dir, 1, ['--worker']);
  const b = await startWork(t.env, dir, 1, ['--worker']);
  handles.push(a, b);
  const total = WRITERS * PER_WRITER;
  const writing = writeKeyed();
  await waitFor(async () => (await effectCount()) >= total * 0.3, {
    timeoutMs: 60_000,
    message: '30% handled',
  });
  a.killGroup('SIGKILL');
  await a.waitForExit();
  await writing;
  await waitFor(async () => (await effectCount()) >= total, {
    timeoutMs: 120_000,
    intervalMs: 500,
    message: 'every effect committed',
  });
  await sleep(1500);

  const { rows: notes } = await t.pool.query<{ id: string; key: string }>(
    `SELECT n.id::text, n.key FROM ${s}.notifications n WHERE n.channel = 'accounts' ORDER BY n.id`,
  );
  expect(notes.length).toBe(total);
  const { rows: effects } = await t.pool.query<{ notification_id: string; key: string }>(
    `SELECT notification_id::text, key FROM ${s}.effects ORDER BY seq`,
  );
  // Exactly once: one effect per notification, none extra.
  expect(effects.length).toBe(total);
  expect(new Set(effects.map((e) => e.notification_id)).size).toBe(total);
  const { rows: runs } = await t.pool.query<{
    notification_id: string;
    key: string;
    started: number;
    ended: number | null;
  }>(
    `SELECT notification_id::text, key, extract(epoch FROM started_at)::float8 AS started,
            extract(epoch FROM ended_at)::float8 AS ended
       FROM ${s}.runs ORDER BY started_at, seq`,
  );
  // Some attempts failed and were retried (their effects rolled back).
  expect(runs.length).toBeGreaterThan(total);
  const keys = new Set(notes.map((n) => n.key));
  expect(keys.size).toBeGreaterThan(KEYS / 2);
  for (const key of keys) {
    // Per key in order: the committed effects follow id order, which is commit order per key.
    const want = notes.filter((n) => n.key === key).map((n) => n.id);
    const got = effects.filter((e) => e.key === key).map((e) => e.notification_id);
    expect(got, key).toEqual(want);
    // Never two at once (a run without an end was killed with its process).
    expectOneAtATime(
      key,
      runs.filter((x) => x.key === key),
    );
  }
});
