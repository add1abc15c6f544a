/**
 * Helpers of the operations tests (test/integration/ops-*.test.ts): consumer files that record
 * each handler run in `<schema>.ran`, and starters that wait until a process is ready.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { expect } from 'vitest';
import { REPO_ROOT, runCli, startCli, type CliHandle } from './cli.js';
import { randomId, type TestEnv } from './env.js';

const dirs: string[] = [];

/** Writes files into a fresh `.tmp/ops-<random>/` inside the repo (so `pgq-bridge` resolves). */
export function writeOpsConsumers(files: Record<string, string>): string {
  const dir = join(REPO_ROOT, '.tmp', `ops-${randomId()}`);
  mkdirSync(dir, { recursive: true });
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

/** Removes the directories made by {@link writeOpsConsumers}. */
export function removeOpsConsumers(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/**
 * Head of a consumer file: `ran(consumer, n, phase)` inserts a row into `<schema>.ran`, and
 * `sleep(ms)`.
 */
export const RAN = `
import pg from 'pg';
import { defineConsumer, PermanentError } from 'pgq-bridge';
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
pool.on('error', () => {});
const table = '"' + process.env.PGQ_SCHEMA + '".ran';
async function ran(consumer, n, phase) {
  await pool.query('INSERT INTO ' + table + ' (consumer, notification_id, phase, pid) VALUES ($1, $2, $3, $4)',
    [consumer, n.id, phase, process.pid]);
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
void PermanentError; void sleep;
`;

/** Runs `migrate` and creates `<schema>.ran`. */
export async function migrateWithRanTable(t: TestEnv): Promise<void> {
  const result = await runCli(['migrate'], { env: t.env });
  expect(result.code, result.stderr).toBe(0);
  await t.pool.query(
    `CREATE TABLE "${t.schema}".ran (
       seq bigserial PRIMARY KEY, consumer text NOT NULL, notification_id bigint NOT NULL,
       phase text NOT NULL, pid int NOT NULL)`,
  );
}

/** Rows of `<schema>.ran` with this phase: notification id → count. */
export async function ranCounts(t: TestEnv, phase: string): Promise<Map<string, number>> {
  const { rows } = await t.pool.query<{ id: string; n: number }>(
    `SELECT notification_id::text AS id, count(*)::int AS n FROM "${t.schema}".ran
      WHERE phase = $1 GROUP BY 1`,
    [phase],
  );
  return new Map(rows.map((r) => [r.id, r.n]));
}

/** Stores `count` notifications on `channel` through the SQL function; returns their ids. */
export async function sendMany(
  t: TestEnv,
  channel: string,
  count: number,
  payload: (i: number) => unknown = (i) => ({ i }),
): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT "${t.schema}".notify($1, $2::jsonb)::text AS id`,
      [channel, JSON.stringify(payload(i))],
    );
    ids.push(rows[0].id);
  }
  return ids;
}

/** Starts `listen` and waits until it says so. */
export async function startListening(
  env: NodeJS.ProcessEnv,
  args: string[] = [],
): Promise<CliHandle> {
  const listen = startCli(['listen', ...args], { env });
  await listen.waitForOutput(/LISTEN connection ready/);
  return listen;
}

/** The pino lines of a handle whose `msg` equals `msg`. */
export function logsWith(handle: CliHandle, msg: string): Array<Record<string, unknown>> {
  return handle.logs().filter((l) => l.msg === msg);
}

/** A TCP proxy to Postgres that never forwards notifications (see {@link startPoolerLikeProxy}). */
export interface DroppingProxy {
  port: number;
  /** Notifications dropped so far. */
  readonly dropped: number;
  close(): Promise<void>;
}

/**
 * Starts a TCP proxy in front of Postgres that drops every NotificationResponse ('A') message
 * the server sends: to a LISTEN connection it looks like a transaction-mode pooler (PgBouncer),
 * where LISTEN succeeds but nothing ever arrives. Everything else passes through unchanged.
 */
export async function startPoolerLikeProxy(target: {
  host: string;
  port: number;
}): Promise<DroppingProxy> {
  const sockets = new Set<Socket>();
  let dropped = 0;
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host);
    sockets.add(client).add(upstream);
    let pending = Buffer.alloc(0);
    client.on('data', (chunk) => upstream.write(chunk));
    upstream.on('data', (chunk: Buffer) => {
      // Server messages: 1 type byte, then a 4-byte length that counts itself.
      pending = Buffer.concat([pending, chunk]);
      const out: Buffer[] = [];
      while (pending.length >= 5) {
        const length = pending.readUInt32BE(1);
        if (pending.length < length + 1) break;
        const message = pending.subarray(0, length + 1);
        pending = pending.subarray(length + 1);
        if (message[0] === 0x41) dropped++;
        else out.push(message);
      }
      if (out.length) client.write(Buffer.concat(out));
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    get dropped() {
      return dropped;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
