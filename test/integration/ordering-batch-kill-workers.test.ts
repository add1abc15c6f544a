/**
 * Ordered batch consumers with real processes (issue 13): 8 writers change 40 rows at random
 * (each row's changes commit in sequence under its row lock), a trigger added with
 * `pgq-bridge triggers add` keys every change by its row, and an ordered `handleBatch` consumer
 * with random handler times and transient failures (retries with backoff, merged groups, split
 * batches) runs on two `work` processes; one of them and the listener are killed -9 mid-stream
 * (the listener restarted). Afterwards, for every row: no two handler calls holding the row ran
 * at once, and the calls saw the row's versions 1, 2, 3, ... in order, none missing.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
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
    CREATE TABLE ${s}.calls (
      call bigserial PRIMARY KEY, pid int NOT NULL, size int NOT NULL, ok boolean,
      started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz);
    CREATE TABLE ${s}.items (
      call bigint NOT NULL, pos int NOT NULL, notification_id bigint NOT NULL, key text,
      version int, PRIMARY KEY (call, pos));
  `);
  // Only updates: the rows exist before the consumer registers (startFrom 'now').
  const added = await runCli(
    ['triggers', 'add', `${t.schema}.rows`, '--channel', 'rows', '--events', 'update'],
    { env: t.env },
  );
  expect(added.code, added.stderr).toBe(0);
  dir = writeConsumers({
    'ordered-batch.mjs': `
import pg from 'pg';
import { defineConsumer } from 'pgq-bridge';
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 8 });
pool.on('error', () => {});
const s = '"' + process.env.PGQ_SCHEMA + '"';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export default defineConsumer({
  id: 'ordered-batch', channels: ['rows'], ordered: true, concurrency: 4, attempts: 20,
  backoff: { type: 'fixed', delay: 100 }, lockDuration: 2000, stalledInterval: 1000,
  batch: { size: 8, maxWaitMs: 20 },
  async handleBatch(ns) {
    const { rows } = await pool.query(
      'INSERT INTO ' + s + '.calls (pid, size) VALUES ($1, $2) RETURNING call', [process.pid, ns.length]);
    const call = rows[0].call;
    await pool.query(
      'INSERT INTO ' + s + '.items (call, pos, notification_id, key, version) ' +
      'SELECT $1, p, i, k, v FROM unnest($2::bigint[], $3::text[], $4::int[]) WITH ORDINALITY u(i, k, v, p)',
      [call, ns.map((n) => n.id), ns.map((n) => n.key), ns.map((n) => n.change.new.version)]);
    await sleep(Math.random() * 25);
    const ok = Math.random() >= 0.15;
    await pool.query('UPDATE ' + s + '.calls SET ok = $2, ended_at = clock_timestamp() WHERE call = $1',
      [call, ok]);
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
    `SELECT count(DISTINCT i.notification_id)::int AS n
       FROM ${s}.items i JOIN ${s}.calls c USING (call) WHERE c.ok`,
  );
  return rows[0].n;
}

interface Item {
  call: string;
  notification_id: string;
  key: string;
  version: number;
  ok: boolean | null;
  started: number;
  ended: number | null;
}

it('hands each row change to handleBatch in order, never two calls of one row at once, through kill -9 of a worker and the listener', async () => {
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
    timeoutMs: 150_000,
    intervalMs: 500,
    message: 'every change handled',
  });
  await sleep(1000);

  const { rows: versions } = await t.pool.query<{ id: number; version: number }>(
    `SELECT id, version FROM ${s}.rows ORDER BY id`,
  );
  expect(versions.reduce((sum, r) => sum + r.version, 0)).toBe(total);
  const { rows: items } = await t.pool.query<Item>(
    `SELECT c.call::text, i.notification_id::text, i.key, i.version, c.ok,
            extract(epoch FROM c.started_at)::float8 AS started,
            extract(epoch FROM c.ended_at)::float8 AS ended
       FROM ${s}.items i JOIN ${s}.calls c USING (call) ORDER BY c.started_at, c.call, i.pos`,
  );
  const { rows: shape } = await t.pool.query<{ failed: number; multi: number }>(
    `SELECT count(*) FILTER (WHERE ok = false)::int AS failed,
            count(*) FILTER (WHERE size > 1)::int AS multi FROM ${s}.calls`,
  );
  // Transient failures happened, and calls held several notifications.
  expect(shape[0].failed).toBeGreaterThan(0);
  expect(shape[0].multi).toBeGreaterThan(0);
  const byKey = new Map<string, Item[]>();
  for (const r of items) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  expect(byKey.size).toBe(ROWS);
  for (const row of versions) {
    const key = `${t.schema}.rows:${row.id}`;
    const list = byKey.get(key) ?? [];
    // Never two calls holding the row at once (a call without an end was killed with its
    // process); in order, nothing missing: the first successful handling of each change, in
    // the order the calls ran and within a call in its order, saw versions 1..N.
    expectOneAtATime(
      key,
      list.filter((r, i) => i === 0 || list[i - 1].call !== r.call),
    );
    const seen = firstSuccessfulVersions(list);
    expect(seen, key).toEqual(Array.from({ length: row.version }, (_, i) => i + 1));
  }
});
