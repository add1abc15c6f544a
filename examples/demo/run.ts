/**
 * pgq-bridge demo: a `users` table with a data-change trigger and three consumers (welcome
 * e-mail, cache invalidation, webhook), against local Postgres and Redis.
 *
 *   npm run demo                 # runs until Ctrl-C; change pgq_demo.users with psql and watch
 *   npm run demo -- --once       # stops (exit 0) once the sample changes are handled
 *
 * Steps: migrate, create pgq_demo.users, `pgq-bridge triggers add`, start a webhook sink, start
 * `pgq-bridge listen` and `pgq-bridge work` as child processes, write a few user changes with
 * `withContext`, and wait until every consumer did its part.
 *
 * `--no-bridge` leaves out listen/work (docker compose runs them as services); `--sink-host` and
 * `--sink-port` choose where the webhook sink listens (default 127.0.0.1 and a free port).
 * Settings come from the usual env: DATABASE_URL, REDIS_URL, PGQ_SCHEMA, PGQ_PREFIX.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { withContext } from 'pgq-bridge';
import { USERS_CHANNEL, cacheKey, demoSchema, outboxPath } from './shared.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..');
const cli = join(repoRoot, 'bin', 'pgq-bridge.js');

const { values: flags } = parseArgs({
  options: {
    once: { type: 'boolean', default: false },
    'no-bridge': { type: 'boolean', default: false },
    'sink-host': { type: 'string', default: '127.0.0.1' },
    'sink-port': { type: 'string', default: '0' },
    timeout: { type: 'string', default: '60' },
  },
});

const env: NodeJS.ProcessEnv = {
  ...process.env,
  DATABASE_URL: process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres',
  REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  LOG_FORMAT: process.env.LOG_FORMAT ?? 'pretty',
};
const pgqSchema = env.PGQ_SCHEMA ?? 'pgq_bridge';
const schema = demoSchema();
const usersTable = `${pg.escapeIdentifier(schema)}.users`;

function say(message: string): void {
  console.log(`[demo] ${message}`);
}

/** Prints a child's output line by line, prefixed, and lets `watch` see each line. */
function relay(child: ChildProcess, name: string, watch?: (line: string) => void): void {
  for (const stream of [child.stdout, child.stderr]) {
    if (!stream) continue;
    createInterface({ input: stream }).on('line', (line) => {
      console.log(`[${name}] ${line}`);
      watch?.(line);
    });
  }
}

/** Runs a pgq-bridge command to completion; rejects if it fails. */
function pgqBridge(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    relay(child, `pgq-bridge ${args[0]}`);
    child.once('error', reject);
    child.once('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`pgq-bridge ${args.join(' ')} exited ${code}`)),
    );
  });
}

/** Services still running; killed if the demo itself dies without stopping them. */
const services = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of services) child.kill('SIGKILL');
});

/** Set by Ctrl-C / SIGTERM: the demo stops its services and exits. */
const interrupted = new AbortController();
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => interrupted.abort());
}

/** Sleeps `ms`, or less when interrupted. */
function pause(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      interrupted.signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    interrupted.signal.addEventListener('abort', done, { once: true });
  });
}

/** A long-running pgq-bridge command, resolved once a line matches `ready`. */
function startService(args: string[], ready: RegExp, readyCount = 1): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    // Own process group: Ctrl-C reaches only the demo, which then stops the services gracefully.
    const child = spawn(process.execPath, [cli, ...args], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    services.add(child);
    child.once('exit', () => services.delete(child));
    let seen = 0;
    relay(child, args[0], (line) => {
      if (ready.test(line) && ++seen === readyCount) resolve(child);
    });
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`pgq-bridge ${args[0]} exited early (${code})`)));
  });
}

/** The webhook receiver: records each delivery once per idempotency key. */
function startSink(): Promise<{ server: Server; url: string; received: Map<string, unknown> }> {
  const received = new Map<string, unknown>();
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      const key = String(req.headers['idempotency-key'] ?? `anon-${received.size}`);
      const event = JSON.parse(body || 'null') as { event?: string; userId?: unknown } | null;
      const duplicate = received.has(key);
      received.set(key, event);
      console.log(
        `[sink] ${req.method} ${req.url} ${event?.event} user ${String(event?.userId)}` +
          (duplicate ? ' (duplicate, ignored)' : ''),
      );
      res.writeHead(204).end();
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(flags['sink-port']), flags['sink-host'], () => {
      const { port } = server.address() as AddressInfo;
      const host = flags['sink-host'] === '0.0.0.0' ? '127.0.0.1' : flags['sink-host'];
      resolve({ server, received, url: `http://${host}:${port}/webhook` });
    });
  });
}

/** Resolves when a child has exited (after SIGTERM, at most 15 s later with SIGKILL). */
function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

async function readOutbox(): Promise<Array<{ to: string }>> {
  const text = await readFile(outboxPath(), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as { to: string });
}

async function main(): Promise<number> {
  const children: ChildProcess[] = [];
  const pool = new pg.Pool({ connectionString: env.DATABASE_URL, max: 2 });
  const redis = new Redis(env.REDIS_URL as string, { lazyConnect: true });
  let sink: Awaited<ReturnType<typeof startSink>> | undefined;
  const shutdown = async (): Promise<void> => {
    await Promise.all(children.map(stop));
    await new Promise((resolve) => (sink ? sink.server.close(resolve) : resolve(undefined)));
    await pool.end();
    redis.disconnect();
  };
  try {
    say(`schema ${pgqSchema}, users table ${schema}.users, channel ${USERS_CHANNEL}`);
    await pgqBridge(['migrate']);
    await pool.query(`CREATE SCHEMA IF NOT EXISTS ${pg.escapeIdentifier(schema)}`);
    await pool.query(
      `CREATE TABLE IF NOT EXISTS ${usersTable} (
         id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
         email text NOT NULL UNIQUE,
         name text NOT NULL)`,
    );
    // TRUNCATE fires no row trigger: each run starts from an empty table without notifications.
    await pool.query(`TRUNCATE ${usersTable} RESTART IDENTITY`);
    await pgqBridge(['triggers', 'add', `${schema}.users`, '--channel', USERS_CHANNEL]);

    sink = await startSink();
    env.DEMO_WEBHOOK_URL ??= sink.url;
    env.DEMO_OUTBOX ??= outboxPath();
    await mkdir(dirname(env.DEMO_OUTBOX), { recursive: true });
    await rm(env.DEMO_OUTBOX, { force: true });
    say(`webhook sink listening at ${sink.url}`);

    if (!flags['no-bridge']) {
      const consumersDir = join(here, 'consumers');
      children.push(await startService(['listen'], /listening/));
      children.push(
        await startService(
          ['work', '--consumers-dir', consumersDir],
          /consumer registered; worker started/,
          3,
        ),
      );
    }

    say('writing sample changes: 3 sign-ups, a rename, a deletion');
    const ids = await withContext(
      pool,
      { actor: 'signup-form', requestId: 'req-1' },
      async (tx) => {
        const res = await tx.query<{ id: number; email: string }>(
          `INSERT INTO ${usersTable} (email, name) VALUES
           ('alice@example.com', 'Alice'), ('bob@example.com', 'Bob'), ('carol@example.com', 'Carol')
         RETURNING id, email`,
        );
        return Object.fromEntries(res.rows.map((r) => [r.email.split('@')[0], r.id]));
      },
    );
    // The app caches users it reads; the cache-invalidation consumer keeps the copies fresh.
    await redis.connect();
    for (const [name, id] of Object.entries(ids)) {
      await redis.set(cacheKey(id), JSON.stringify({ id, name }));
    }
    await withContext(pool, { actor: 'admin:dana', requestId: 'req-2' }, (tx) =>
      tx.query(`UPDATE ${usersTable} SET name = 'Alice Liddell' WHERE id = $1`, [ids.alice]),
    );
    await withContext(pool, { actor: 'gdpr-job', requestId: 'req-3' }, (tx) =>
      tx.query(`DELETE FROM ${usersTable} WHERE id = $1`, [ids.bob]),
    );

    if (flags['no-bridge']) {
      say('changes written; `pgq-bridge work` handles them (see its logs)');
      if (flags.once) return 0;
    } else {
      const deadline = Date.now() + Number(flags.timeout) * 1000;
      let state = '';
      for (;;) {
        const mails = (await readOutbox()).map((m) => m.to).sort();
        const stale = await redis.exists(cacheKey(ids.alice), cacheKey(ids.bob));
        const kept = await redis.exists(cacheKey(ids.carol));
        const hooks = sink.received.size;
        // Every consumer also handles the changes it ignores (the e-mail consumer skips updates
        // and deletes): done when the ledger has all 3 x 5 outcomes, not just the visible effects.
        const { rows } = await pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${pg.escapeIdentifier(pgqSchema)}.deliveries d
             JOIN ${pg.escapeIdentifier(pgqSchema)}.notifications n ON n.id = d.notification_id
            WHERE n.channel = $1 AND d.status = 'completed'`,
          [USERS_CHANNEL],
        );
        state = `${mails.length}/3 welcome e-mails, ${2 - stale}/2 cache invalidations, ${hooks}/5 webhooks`;
        if (mails.length === 3 && stale === 0 && hooks === 5 && rows[0].n >= 15) {
          if (kept !== 1) throw new Error('the cache entry of an unchanged user was dropped');
          say(`done: 5 changes -> ${state}`);
          break;
        }
        if (Date.now() > deadline) throw new Error(`timed out: ${state}`);
        if (interrupted.signal.aborted) throw new Error(`interrupted: ${state}`);
        await pause(200);
      }
      if (flags.once) return 0;
    }
    say(`now change ${schema}.users yourself (psql) and watch the consumers; Ctrl-C to stop`);
    while (!interrupted.signal.aborted) await pause(60_000);
    return 0;
  } catch (error) {
    say(`failed: ${error instanceof Error ? error.message : String(error)}`);
    return 1;
  } finally {
    say('stopping');
    await shutdown();
  }
}

process.exitCode = await main();
