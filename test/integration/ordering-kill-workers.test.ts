/**
 * Ordered delivery with real processes (issue 13): 8 writers change 40 rows at random (each
 * change of a row commits in sequence under its row lock), a `notify_data_change` trigger keys
 * every change by its row, and an ordered consumer with random handler times and transient
 * failures runs on two `work` processes; one of them and the listener are killed -9 mid-stream
 * (the listener restarted). Afterwards, for every row: the handler ran one at a time, saw the
 * row's versions 1, 2, 3, ... in order, and missed none.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { addTrigger } from '../../src/index.js';
import { runCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { removeConsumerDirs, startListen, startWork, writeConsumers } from '../support/delivery.js';
import { sleep, waitFor } from '../support/wait.js';
import { expectOneAtATime, firstSuccessfulVersions, runWriters } from '../support/ordering.js';

const ROWS = 40;
const WRITERS = 8;
const CHANGES_PER_WRITER = 60;

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
    CREATE TABLE ${s}.rows (id int PRIMARY KEY, version int NOT NULL DEFAULT 0);
    INSERT INTO ${s}.rows SELECT g FROM generate_series(1, ${ROWS}) g;
    CREATE TABLE ${s}.runs (
      seq bigserial PRIMARY KEY, notification_id bigint NOT NULL, key text, version int,
      pid int NOT NULL, ok boolean, started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      ended_at timestamptz);
  `);
  // Only updates: the rows exist before the consumer registers (startFrom 'now').
  await addTrigger(t.pool, `${t.schema}.rows`, {
    schema: t.schema,
    channel: 'rows',
    events: ['update'],
  });
  dir = writeConsumers({
    'ordered.mjs': `
import pg from 'pg';
import { defineConsumer } from 'pgq-bridge';
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 8 });
pool.on('error', () => {});
const runs = '"' + process.env.PGQ_SCHEMA + '".runs';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export default defineConsumer({
  id: 'ordered', channels: ['rows'], ordered: true, concurrency: 6, attempts: 20,
  backoff: { type: 'fixed', delay: 100 }, lockDuration: 2000, stalledInterval: 1000,
  async handle(n) {
    const { rows } = await pool.query(
      'INSERT INTO ' + runs + ' (notification_id, key, version, pid) VALUES ($1, $2, $3, $4) RETURNING seq',
      [n.id, n.key, n.change.new.version, process.pid]);
    await sleep(Math.random() * 12);
    const ok = Math.random() >= 0.15;
    await pool.query('UPDATE ' + runs + ' SET ok = $2, ended_at = clock_timestamp() WHERE seq = $1',
      [rows[0].seq, ok]);
    if (!ok) throw new Error('transient failure');
  },
});`,
  });
});

afterAll(async () => {
  for (const h of handles) if (!h.exited) h.killGroup('SIGKILL');
  await t.cleanup();
  removeConsumerDirs();
});

/** The writers: random rows, one committed change at a time (the UPDATE holds the row lock). */
function writeRows(): Promise<void> {
  return runWriters(t.databaseUrl, WRITERS, CHANGES_PER_WRITER, (client) =>
    client.query(`UPDATE ${s}.rows SET version = version + 1 WHERE id = $1`, [
      1 + Math.floor(Math.random() * ROWS),
    ]),
  );
}

async function okCount(): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT count(DISTINCT notification_id)::int AS n FROM ${s}.runs WHERE ok`,
  );
  return rows[0].n;
}

it('handles every row change in order, one at a time per row, through kill -9 of a worker and the listener', async () => {
  let listen = await startListen(t.env);
  handles.push(listen);
  const a = await startWork(t.env, dir, 1, ['--worker']);
  const b = await startWork(t.env, dir, 1, ['--worker']);
  handles.push(a, b);
  const total = WRITERS * CHANGES_PER_WRITER;
  const writing = writeRows();
  await waitFor(async () => (await okCount()) >= total * 0.3, {
    timeoutMs: 60_000,
    message: '30% handled',
  });
  a.killGroup('SIGKILL');
  listen.killGroup('SIGKILL');
  await Promise.all([a.waitForExit(), listen.waitForExit()]);
  listen = await startListen(t.env);
  handles.push(listen);
  await writing;
  await waitFor(async () => (await okCount()) >= total, {
    timeoutMs: 120_000,
    intervalMs: 500,
    message: 'every change handled',
  });
  await sleep(1000);

  const { rows: versions } = await t.pool.query<{ id: number; version: number }>(
    `SELECT id, version FROM ${s}.rows ORDER BY id`,
  );
  expect(versions.reduce((sum, r) => sum + r.version, 0)).toBe(total);
  const { rows: runs } = await t.pool.query<{
    notification_id: string;
    key: string;
    version: number;
    ok: boolean | null;
    started: number;
    ended: number | null;
  }>(
    `SELECT notification_id::text, key, version, ok,
            extract(epoch FROM started_at)::float8 AS started,
            extract(epoch FROM ended_at)::float8 AS ended
       FROM ${s}.runs ORDER BY started_at, seq`,
  );
  const failures = runs.filter((r) => r.ok === false).length;
  expect(failures).toBeGreaterThan(0);
  const byKey = new Map<string, typeof runs>();
  for (const r of runs) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  expect(byKey.size).toBe(ROWS);
  for (const row of versions) {
    const key = `${t.schema}.rows:${row.id}`;
    const list = byKey.get(key) ?? [];
    // Never two at once (a run without an end was killed with its process); in order, nothing
    // missing: the first successful run of each change, in the order they ran, saw 1..N.
    expectOneAtATime(key, list);
    const seen = firstSuccessfulVersions(list);
    expect(seen, key).toEqual(Array.from({ length: row.version }, (_, i) => i + 1));
  }
});
