import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { quoteIdent } from '../identifiers.js';
import { silentLogger, type Logger } from '../log.js';
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
 * once: everything happens in one transaction under a transaction-scoped advisory lock.
 */
export async function migrate(options: MigrateOptions): Promise<MigrateResult> {
  const schema = options.schema ?? 'pgq_bridge';
  const log = options.logger ?? silentLogger();
  const ownClient = typeof options.db === 'string';
  const client: Queryable = ownClient
    ? new pg.Client({ connectionString: options.db as string })
    : (options.db as Queryable);
  if (ownClient) await (client as pg.Client).connect();
  const useClient = client instanceof pg.Pool ? await client.connect() : client;
  const s = quoteIdent(schema);
  const applied: string[] = [];
  try {
    await useClient.query('BEGIN');
    await useClient.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [
      `pgq_bridge.migrate:${schema}`,
    ]);
    await useClient.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
    await useClient.query(
      `CREATE TABLE IF NOT EXISTS ${s}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const done = await useClient.query<{ version: number }>(
      `SELECT version FROM ${s}.schema_migrations`,
    );
    const doneVersions = new Set(done.rows.map((r) => r.version));
    for (const m of loadMigrations(schema)) {
      if (doneVersions.has(m.version)) continue;
      await useClient.query(m.sql);
      await useClient.query(`INSERT INTO ${s}.schema_migrations (version, name) VALUES ($1, $2)`, [
        m.version,
        m.name,
      ]);
      applied.push(m.name);
      log.info({ migration: m.name, schema }, 'migration applied');
    }
    await useClient.query('COMMIT');
    const version = Math.max(
      0,
      ...doneVersions,
      ...applied.map((name) => Number(name.slice(0, 4))),
    );
    return { applied, version };
  } catch (error) {
    await useClient.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    if (useClient !== client) (useClient as pg.PoolClient).release();
    if (ownClient) await (client as pg.Client).end();
  }
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
