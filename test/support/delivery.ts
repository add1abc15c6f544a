/**
 * Helpers for the process-level core tests (test/integration/core-*.test.ts): consumer files
 * that record what they handled in a table of the test schema, and starters for `listen`/`work`
 * that wait until the process is really ready.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { expect } from 'vitest';
import { REPO_ROOT, runCli, startCli, type CliHandle } from './cli.js';
import { randomId, type TestEnv } from './env.js';
import { waitFor } from './wait.js';

const dirs: string[] = [];

/**
 * Writes consumer files into a fresh `.tmp/<random>/` directory inside the repo (so that
 * `import ... from 'pgq-bridge'` resolves to this package) and returns its path.
 */
export function writeConsumers(files: Record<string, string>): string {
  const dir = join(REPO_ROOT, '.tmp', `core-${randomId()}`);
  mkdirSync(dir, { recursive: true });
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

/** Removes every directory made by {@link writeConsumers}. */
export function removeConsumerDirs(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/**
 * Start of a consumer file: `record(consumer, n, info?)` inserts one row into
 * `<schema>.handled` (of DATABASE_URL / PGQ_SCHEMA of the work process) per handler run.
 */
export const RECORDER = `
import pg from 'pg';
import { createHash } from 'node:crypto';
import { defineConsumer, PermanentError } from 'pgq-bridge';
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 8 });
// A stopped throwaway server makes idle clients fail; the work process must not crash on it.
pool.on('error', () => {});
const handledTable = '"' + process.env.PGQ_SCHEMA + '".handled';
async function record(consumer, n, info = null) {
  await pool.query(
    'INSERT INTO ' + handledTable + ' (consumer, notification_id, attempt, is_replay, info, pid) VALUES ($1, $2, $3, $4, $5, $6)',
    [consumer, n.id, n.attempt, n.isReplay, info, process.pid],
  );
}
const sha256 = (text) => createHash('sha256').update(text).digest('hex');
void PermanentError; void sha256;
`;

/** Runs `migrate` for the test schema and creates `<schema>.handled`. */
export async function migrateWithHandledTable(t: TestEnv): Promise<void> {
  const result = await runCli(['migrate'], { env: t.env });
  expect(result.code, result.stderr).toBe(0);
  await t.pool.query(
    `CREATE TABLE "${t.schema}".handled (
       seq bigserial PRIMARY KEY,
       consumer text NOT NULL,
       notification_id bigint NOT NULL,
       attempt int NOT NULL,
       is_replay boolean NOT NULL,
       info text,
       pid int NOT NULL,
       at timestamptz NOT NULL DEFAULT clock_timestamp())`,
  );
}

/** Count of handled rows (all consumers). */
export async function handledCount(db: pg.Pool, schema: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM "${schema}".handled`,
  );
  return rows[0].n;
}

/** Waits until `<schema>.handled` holds at least `expected` rows. */
export async function waitForHandled(
  db: pg.Pool,
  schema: string,
  expected: number,
  timeoutMs = 60_000,
): Promise<void> {
  let last = -1;
  await waitFor(
    async () => {
      last = await handledCount(db, schema);
      return last >= expected;
    },
    { timeoutMs, intervalMs: 200, message: `${expected} handled rows (last count: ${last})` },
  ).catch((error: Error) => {
    throw new Error(`${error.message}; last count ${last}`);
  });
}

/**
 * Per consumer: how many handler runs were recorded, how many distinct notifications they
 * covered, and the runs beyond the first of a notification (duplicates).
 */
export async function handledSummary(
  db: pg.Pool,
  schema: string,
): Promise<Record<string, { runs: number; distinct: number; duplicates: number }>> {
  const { rows } = await db.query<{ consumer: string; runs: number; distinct: number }>(
    `SELECT consumer, count(*)::int AS runs, count(DISTINCT notification_id)::int AS distinct
       FROM "${schema}".handled GROUP BY consumer ORDER BY consumer`,
  );
  return Object.fromEntries(
    rows.map((r) => [
      r.consumer,
      { runs: r.runs, distinct: r.distinct, duplicates: r.runs - r.distinct },
    ]),
  );
}

/** Whether a pino line has the given message. */
export function hasMsg(msg: string | RegExp) {
  return (line: { json?: Record<string, unknown>; msg?: unknown }): boolean => {
    const text = line.json ? line.json.msg : line.msg;
    return typeof text === 'string' && (typeof msg === 'string' ? text === msg : msg.test(text));
  };
}

/** Starts `work --consumers-dir <dir>` and waits until `consumers` workers have started. */
export async function startWork(
  env: NodeJS.ProcessEnv,
  dir: string,
  consumers: number,
  extraArgs: string[] = [],
): Promise<CliHandle> {
  const work = startCli(['work', '--consumers-dir', dir, ...extraArgs], { env });
  await waitFor(
    () => {
      if (work.exited) throw new Error(`work exited: ${work.stderr()}${work.stdout()}`);
      return work.logs().filter(hasMsg('consumer registered; worker started')).length >= consumers;
    },
    { timeoutMs: 30_000, message: `${consumers} workers started` },
  );
  return work;
}

/** Starts `listen` and waits until its LISTEN connection is ready. */
export async function startListen(env: NodeJS.ProcessEnv, args: string[] = []): Promise<CliHandle> {
  const listen = startCli(['listen', ...args], { env });
  await listen.waitForOutput(hasMsg('LISTEN connection ready'), 30_000);
  return listen;
}

/** Stops a long-running CLI with `signal` and expects a clean exit (code 0). */
export async function stopGracefully(
  handle: CliHandle,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<void> {
  handle.kill(signal);
  const exit = await handle.waitForExit(30_000);
  expect(exit, handle.stderr()).toEqual({ code: 0, signal: null });
}

/**
 * Sends `count` notifications from `connections` concurrent connections, one per transaction,
 * through the SQL `notify()`. `channelOf(i)` picks each one's channel. Returns the ids by channel.
 */
export async function sendNotifications(
  databaseUrl: string,
  schema: string,
  count: number,
  connections: number,
  channelOf: (i: number) => string,
): Promise<Map<string, string[]>> {
  const ids = new Map<string, string[]>();
  let next = 0;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        for (let i = next++; i < count; i = next++) {
          const channel = channelOf(i);
          const { rows } = await client.query<{ id: string }>(
            `SELECT "${schema}".notify($1, $2::jsonb)::text AS id`,
            [channel, JSON.stringify({ i })],
          );
          const list = ids.get(channel) ?? [];
          list.push(rows[0].id);
          ids.set(channel, list);
        }
      } finally {
        await client.end();
      }
    }),
  );
  return ids;
}

/**
 * Stores `perSecond` notifications a second on `channel` for `seconds` seconds (a statement every
 * 20 ms) while `reconcile --verify` runs again and again beside it; resolves with the count sent
 * and how many verify runs completed (each expected to exit 0).
 */
export async function writeWhileVerifying(
  t: TestEnv,
  channel: string,
  perSecond: number,
  seconds: number,
): Promise<{ sent: number; verifies: number }> {
  let writing = true;
  let verifies = 0;
  const verifying = (async () => {
    while (writing) {
      const result = await runCli(['reconcile', '--verify', '--json'], {
        env: t.env,
        timeoutMs: 60_000,
      });
      expect(result.code, result.stderr).toBe(0);
      verifies++;
    }
  })();
  let sent = 0;
  const started = Date.now();
  try {
    while (Date.now() - started < seconds * 1000) {
      const due = Math.floor(((Date.now() - started) / 1000) * perSecond) - sent;
      if (due > 0) {
        await t.pool.query(
          `SELECT "${t.schema}".notify($1, jsonb_build_object('i', i))
             FROM generate_series(1, $2::int) AS i`,
          [channel, due],
        );
        sent += due;
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    writing = false;
    await verifying;
  }
  return { sent, verifies };
}
