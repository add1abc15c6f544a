/**
 * Helpers for the change-capture tests (issue 4): a consumer file that records everything a
 * handler saw in `<schema>.received`, and starters for real `listen` / `work` processes.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { expect } from 'vitest';
import { REPO_ROOT, runCli, startCli, type CliHandle } from './cli.js';
import { randomId, type TestEnv } from './env.js';
import { waitFor } from './wait.js';

const dirs: string[] = [];

/** Quotes an SQL identifier. */
export function q(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Writes files into a fresh `.tmp/change-<random>/` inside the repo and returns its path. */
export function writeTempDir(files: Record<string, string>): string {
  const dir = join(REPO_ROOT, '.tmp', `change-${randomId()}`);
  mkdirSync(dir, { recursive: true });
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

/** Removes the directories made by {@link writeTempDir}. */
export function removeTempDirs(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** What a recorder consumer stored for one handled notification. */
export interface Received {
  notification_id: string;
  consumer: string;
  channel: string;
  payload: unknown;
  context: Record<string, unknown> | null;
  change: {
    schema: string;
    table: string;
    action: string;
    old: Record<string, unknown> | null;
    new: Record<string, unknown> | null;
  } | null;
  record_id: unknown;
  changed: string[];
  flags: string;
}

/** Runs `migrate` and creates `<schema>.received`. */
export async function migrateWithReceived(t: TestEnv): Promise<void> {
  const result = await runCli(['migrate'], { env: t.env });
  expect(result.code, result.stderr).toBe(0);
  await t.pool.query(
    `CREATE TABLE ${q(t.schema)}.received (
       seq bigserial PRIMARY KEY,
       consumer text NOT NULL,
       notification_id bigint NOT NULL,
       channel text NOT NULL,
       payload jsonb,
       context jsonb,
       change jsonb,
       record_id jsonb,
       changed text[] NOT NULL,
       flags text NOT NULL)`,
  );
}

/**
 * A consumer file: one consumer `id` on `channels` that records every notification it handles
 * (payload, context, change, recordId, changedColumns, isInsert/isUpdate/isDelete).
 */
export function recorderConsumer(id: string, channels: string[]): string {
  return `
import pg from 'pg';
import { defineConsumer } from 'pgq-bridge';
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 });
pool.on('error', () => {});
const table = '"' + process.env.PGQ_SCHEMA + '".received';
const json = (v) => (v === undefined || v === null ? null : JSON.stringify(v));
export default defineConsumer({
  id: ${JSON.stringify(id)},
  channels: ${JSON.stringify(channels)},
  attempts: 2,
  backoff: 100,
  async handle(n) {
    const flags = (n.isInsert() ? 'I' : '') + (n.isUpdate() ? 'U' : '') + (n.isDelete() ? 'D' : '');
    await pool.query(
      'INSERT INTO ' + table + ' (consumer, notification_id, channel, payload, context, change, record_id, changed, flags)' +
        ' VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)',
      [${JSON.stringify(id)}, n.id, n.channel, json(n.payload), json(n.context), json(n.change),
       n.change ? JSON.stringify(n.change.recordId ?? null) : null, n.changedColumns(), flags],
    );
  },
});
`;
}

/** Rows of `<schema>.received` for a channel, in notification order. */
export async function received(db: pg.Pool, schema: string, channel: string): Promise<Received[]> {
  const { rows } = await db.query<Received>(
    `SELECT notification_id, consumer, channel, payload, context, change, record_id, changed, flags
       FROM ${q(schema)}.received WHERE channel = $1 ORDER BY notification_id, seq`,
    [channel],
  );
  return rows;
}

/** Waits until `<schema>.received` has at least `count` rows for `channel`, and returns them. */
export async function waitForReceived(
  db: pg.Pool,
  schema: string,
  channel: string,
  count: number,
  timeoutMs = 20_000,
): Promise<Received[]> {
  let rows: Received[] = [];
  await waitFor(
    async () => {
      rows = await received(db, schema, channel);
      return rows.length >= count;
    },
    { timeoutMs, message: `${count} received rows on ${channel}` },
  );
  return rows;
}

/** Starts `work --consumers-dir dir` and waits until `consumers` workers are registered. */
export async function startWork(
  env: NodeJS.ProcessEnv,
  dir: string,
  consumers = 1,
): Promise<CliHandle> {
  const work = startCli(['work', '--consumers-dir', dir, '--shutdown-timeout', '5'], { env });
  await waitFor(
    () => {
      if (work.exited) throw new Error(`work exited: ${work.stderr()}${work.stdout()}`);
      return (
        work.logs().filter((l) => l.msg === 'consumer registered; worker started').length >=
        consumers
      );
    },
    { timeoutMs: 30_000, message: `${consumers} consumers registered` },
  );
  return work;
}

/** Starts `listen` with a short safety poll and waits until it listens. */
export async function startListen(env: NodeJS.ProcessEnv): Promise<CliHandle> {
  const listen = startCli(['listen', '--poll-interval', '0.5'], { env });
  await listen.waitForOutput((l) => l.json?.msg === 'listening', 30_000);
  return listen;
}

/** Runs `pgq-bridge triggers ...` and expects exit 0; returns stdout. */
export async function triggersCli(env: NodeJS.ProcessEnv, args: string[]): Promise<string> {
  const result = await runCli(['triggers', ...args], { env });
  expect(result.code, `triggers ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}
