import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { quoteIdent } from '../identifiers.js';
import { PgqError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { errorMessage, sleep } from '../util.js';
import { explainLockWait, isLockTimeout } from './locks.js';
import { sessionSettings } from './pool.js';
import type { Queryable } from './store.js';

/** One numbered SQL file under `src/db/migrations/`. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Shipped with the package: `dist/db/migrate.js` → `src/db/migrations/`. */
function migrationsDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return join(here, '..', '..', 'src', 'db', 'migrations');
}

function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/** Reads the migrations, with the schema name filled in, in version order. */
export function loadMigrations(schema: string): Migration[] {
  const dir = migrationsDir();
  return readdirSync(dir)
    .filter((file) => /^\d{4}_[a-z0-9_]+\.sql$/.test(file))
    .sort()
    .map((file) => ({
      version: Number(file.slice(0, 4)),
      name: file.replace(/\.sql$/, ''),
      sql: readFileSync(join(dir, file), 'utf8')
        .replaceAll('@schema_literal@', quoteLiteral(schema))
        .replaceAll('@schema@', quoteIdent(schema)),
    }));
}

/** The latest migration version this code needs. */
export function latestVersion(): number {
  return Math.max(...loadMigrations('pgq_bridge').map((m) => m.version));
}

/** The whole schema as one SQL script, for users who run migrations with their own tool. */
export function migrationScript(schema: string): string {
  const s = quoteIdent(schema);
  const parts = [
    `-- pgq-bridge schema ${schema}`,
    `CREATE SCHEMA IF NOT EXISTS ${s};`,
    `CREATE TABLE IF NOT EXISTS ${s}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());`,
  ];
  for (const m of loadMigrations(schema)) {
    parts.push(
      `-- ${m.name}`,
      m.sql.trim(),
      `INSERT INTO ${s}.schema_migrations (version, name) VALUES (${m.version}, '${m.name}') ON CONFLICT DO NOTHING;`,
    );
  }
  return parts.join('\n') + '\n';
}

/** Options of {@link migrate}. */
export interface MigrateOptions {
  /** A pg Pool, Client or connection string. */
  db: Queryable | string;
  schema?: string;
  logger?: Logger;
  /**
   * Longest one lock wait may take (ms, default 5000): a migration's ALTER TABLE queued behind a
   * long transaction would otherwise stall every query on that table behind itself. On a
   * timeout the whole migration rolls back and is tried again.
   */
  lockTimeoutMs?: number;
  /** How long to keep trying before failing (ms, default 300,000). */
  retryForMs?: number;
}

/** What {@link migrate} did. */
export interface MigrateResult {
  /** Versions applied by this call (empty when already up to date). */
  applied: string[];
  /** Version of the schema after the call. */
  version: number;
}

/**
 * Installs or upgrades pgq-bridge's schema. Idempotent, and safe when several processes run it at
 * once: everything happens in one transaction under a transaction-scoped advisory lock. Every
 * lock (that one and the tables') is waited for at most `lockTimeoutMs`; then the transaction
 * rolls back, the wait is logged with what was waited for, and the migration is tried again
 * with backoff until `retryForMs` has passed.
 */
export async function migrate(options: MigrateOptions): Promise<MigrateResult> {
  const schema = options.schema ?? 'pgq_bridge';
  const log = options.logger ?? silentLogger();
  const lockTimeoutMs = options.lockTimeoutMs ?? 5000;
  const deadline = Date.now() + (options.retryForMs ?? 300_000);
  const ownClient = typeof options.db === 'string';
  const client: Queryable = ownClient
    ? new pg.Client({ connectionString: options.db as string, ...sessionSettings('migrate') })
    : (options.db as Queryable);
  if (ownClient) await (client as pg.Client).connect();
  const useClient = client instanceof pg.Pool ? await client.connect() : client;
  try {
    for (let attempt = 1; ; attempt++) {
      const step = { what: MIGRATION_LOCK };
      try {
        return await migrateOnce(useClient, schema, log, lockTimeoutMs, step);
      } catch (error) {
        await useClient.query('ROLLBACK').catch(() => undefined);
        const key = step.what === MIGRATION_LOCK ? migrationLockKey(schema) : null;
        const explained = await explainLockWait(useClient, error, step.what, key);
        if (!isLockTimeout(error)) throw error;
        if (Date.now() >= deadline) {
          throw new PgqError('PGQ_LOCK_TIMEOUT', `migration gave up: ${errorMessage(explained)}`);
        }
        const delayMs = Math.min(500 * 2 ** (attempt - 1), 10_000);
        log.warn(
          {
            schema,
            attempt,
            waitedMs: lockTimeoutMs,
            retryInMs: delayMs,
            err: errorMessage(explained),
          },
          'migration waited too long for a lock; rolled back, retrying',
        );
        await sleep(delayMs);
      }
    }
  } finally {
    if (useClient !== client) (useClient as pg.PoolClient).release();
    if (ownClient) await (client as pg.Client).end();
  }
}

const MIGRATION_LOCK = 'the migration lock (another pgq-bridge migrate runs)';

function migrationLockKey(schema: string): string {
  return `pgq_bridge.migrate:${schema}`;
}

/** One try of {@link migrate}: one transaction; `step.what` names the lock being waited for. */
async function migrateOnce(
  db: Queryable,
  schema: string,
  log: Logger,
  lockTimeoutMs: number,
  step: { what: string },
): Promise<MigrateResult> {
  const s = quoteIdent(schema);
  const applied: string[] = [];
  await db.query('BEGIN');
  await db.query(`SELECT set_config('lock_timeout', $1, true)`, [`${lockTimeoutMs}ms`]);
  await db.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [
    migrationLockKey(schema),
  ]);
  step.what = `the locks of schema ${schema}`;
  await db.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
  await db.query(
    `CREATE TABLE IF NOT EXISTS ${s}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
  );
  const done = await db.query<{ version: number }>(`SELECT version FROM ${s}.schema_migrations`);
  const doneVersions = new Set(done.rows.map((r) => r.version));
  for (const m of loadMigrations(schema)) {
    if (doneVersions.has(m.version)) continue;
    step.what = `the table locks of migration ${m.name}`;
    await db.query(m.sql);
    await db.query(`INSERT INTO ${s}.schema_migrations (version, name) VALUES ($1, $2)`, [
      m.version,
      m.name,
    ]);
    applied.push(m.name);
  }
  await db.query('COMMIT');
  // Logged after the commit: a try that rolled back applied nothing.
  for (const name of applied) log.info({ migration: name, schema }, 'migration applied');
  const version = Math.max(0, ...doneVersions, ...applied.map((name) => Number(name.slice(0, 4))));
  return { applied, version };
}

/** The schema version installed in the database (0 when pgq-bridge is not installed). */
export async function installedVersion(db: Queryable, schema: string): Promise<number> {
  const exists = await db.query<{ t: string | null }>(`SELECT to_regclass($1) AS t`, [
    `${quoteIdent(schema)}.schema_migrations`,
  ]);
  if (!exists.rows[0]?.t) return 0;
  const res = await db.query<{ v: number | null }>(
    `SELECT max(version) AS v FROM ${quoteIdent(schema)}.schema_migrations`,
  );
  return res.rows[0]?.v ?? 0;
}
