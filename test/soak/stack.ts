/**
 * The soak's world: a throwaway Postgres and Redis (never the shared servers on 5432/6379), a
 * TCP proxy in front of each for the bridge's processes, the pgq-bridge schema, and the soak's
 * own tables: `handled` (one row per handler run, with its start and end), `ledger_log` (every
 * write to the delivery ledger, with its time, kept by a trigger: the ledger itself only keeps the
 * latest outcome), and the keyed writers' `accounts` and `rows` (the latter with a
 * `pgq-bridge triggers add` trigger).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { REPO_ROOT, runCli } from '../support/cli.js';
import {
  startPostgres,
  startRedis,
  type ThrowawayPostgres,
  type ThrowawayRedis,
} from '../support/servers.js';
import { consumersFile, KEYED_CHANNELS } from './consumers.js';
import { TcpProxy } from './proxy.js';

/** Everything a soak run works with. */
export interface Stack {
  postgres: ThrowawayPostgres;
  redis: ThrowawayRedis;
  pgProxy: TcpProxy;
  redisProxy: TcpProxy;
  /** pgq-bridge's schema. */
  schema: string;
  /** The soak's own tables (handled, ledger_log). */
  soakSchema: string;
  prefix: string;
  /** Working dir inside the repo (consumers, logs); removed by `destroy` unless kept. */
  dir: string;
  consumersDir: string;
  logsDir: string;
  /** Environment of the bridge's processes: they reach both servers through the proxies. */
  bridgeEnv: NodeJS.ProcessEnv;
  /** Environment for one-off commands run by the soak itself (direct URLs). */
  directEnv: NodeJS.ProcessEnv;
  /** Direct pool for the monitor and the final checks. */
  pool: pg.Pool;
  /** Direct Redis client for the monitor. */
  redisClient: Redis;
  /** Writes the soak's tables and the ledger as JSON lines into the logs dir (after a failure). */
  dumpTables(): Promise<void>;
  destroy(keepDir: boolean): Promise<void>;
}

/** Settings a CLI child must not inherit from the soak's own environment. */
const SETTINGS = [
  'DATABASE_URL',
  'LISTEN_DATABASE_URL',
  'REDIS_URL',
  'PGQ_SCHEMA',
  'PGQ_PREFIX',
  'PGQ_CONFIG',
  'LOG_LEVEL',
  'LOG_FORMAT',
];

function cliEnv(databaseUrl: string, redisUrl: string, schema: string, prefix: string) {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of SETTINGS) delete env[name];
  return {
    ...env,
    DATABASE_URL: databaseUrl,
    REDIS_URL: redisUrl,
    PGQ_SCHEMA: schema,
    PGQ_PREFIX: prefix,
    LOG_FORMAT: 'json',
    LOG_LEVEL: 'info',
  };
}

async function pgAdmin(url: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** Starts the servers and proxies, migrates, and creates the soak tables. */
export async function createStack(runId: string): Promise<Stack> {
  const [postgres, redis] = await Promise.all([startPostgres(), startRedis()]);
  // Commit times of the ledger's writes: "the ledger said completed" means committed (the
  // verifier reads pg_xact_commit_timestamp of each logged write). Needs a restart; it is kept
  // in postgresql.auto.conf through the chaos' restarts.
  await pgAdmin(postgres.url, 'ALTER SYSTEM SET track_commit_timestamp = on');
  await postgres.stop('fast');
  await postgres.restart();
  const pgProxy = new TcpProxy(postgres.port);
  const redisProxy = new TcpProxy(redis.port);
  await Promise.all([pgProxy.start(), redisProxy.start()]);
  const schema = 'soak_pgq';
  const soakSchema = 'soak';
  const prefix = `soak_${runId}`;
  const dir = join(REPO_ROOT, '.tmp', `soak-${runId}`);
  const consumersDir = join(dir, 'consumers');
  const logsDir = join(dir, 'logs');
  mkdirSync(consumersDir, { recursive: true });
  mkdirSync(logsDir, { recursive: true });
  writeFileSync(join(consumersDir, 'soak.mjs'), consumersFile(soakSchema));

  const pgProxyUrl = `postgres://postgres@127.0.0.1:${pgProxy.port}/test`;
  const redisProxyUrl = `redis://127.0.0.1:${redisProxy.port}`;
  const bridgeEnv = cliEnv(pgProxyUrl, redisProxyUrl, schema, prefix);
  const directEnv = cliEnv(postgres.url, redis.url, schema, prefix);

  const migrated = await runCli(['migrate'], { env: directEnv, timeoutMs: 60_000 });
  if (migrated.code !== 0) throw new Error(`migrate failed: ${migrated.stderr}`);

  const pool = new pg.Pool({
    connectionString: postgres.url,
    max: 4,
    connectionTimeoutMillis: 3000,
  });
  pool.on('error', () => undefined);
  await pool.query(`
    CREATE SCHEMA ${soakSchema};
    CREATE TABLE ${soakSchema}.handled (
      seq bigserial PRIMARY KEY,
      consumer text NOT NULL,
      notification_id bigint NOT NULL,
      attempt int NOT NULL,
      is_replay boolean NOT NULL,
      pid int NOT NULL,
      -- Ordered consumers: the notification's key and the version it carries (commit order).
      key text,
      version int,
      -- The handler meant to outlive its consumer's timeout.
      slow boolean NOT NULL DEFAULT false,
      handled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      -- Set when the run is over (NULL: killed, or its end could not be written).
      ended_at timestamptz,
      -- How it ended: ok, thrown (a deliberate transient failure), failed (aborted or an error).
      outcome text,
      -- The notification's channel, and the version of the consumers file that ran it (deploy.ts).
      channel text NOT NULL,
      code text NOT NULL,
      -- The handler call (its end is recorded by it); a batch consumer's runs of one handleBatch
      -- call share it, also as batch_run; pos: the place in the batch.
      call_id bigint NOT NULL,
      batch_run bigint,
      pos int,
      -- The writing transaction: a transactional consumer's handling shares it with its ledger row.
      xact bigint NOT NULL DEFAULT txid_current());
    CREATE INDEX ON ${soakSchema}.handled (consumer, notification_id);
    CREATE INDEX ON ${soakSchema}.handled (notification_id);
    CREATE INDEX ON ${soakSchema}.handled (call_id);
    CREATE TABLE ${soakSchema}.ledger_log (
      consumer_id text NOT NULL,
      notification_id bigint NOT NULL,
      status text NOT NULL,
      logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      xact bigint NOT NULL DEFAULT txid_current());
    CREATE INDEX ON ${soakSchema}.ledger_log (consumer_id, notification_id);
    CREATE FUNCTION ${soakSchema}.log_delivery() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
      INSERT INTO ${soakSchema}.ledger_log (consumer_id, notification_id, status)
      VALUES (NEW.consumer_id, NEW.notification_id, NEW.status);
      RETURN NULL;
    END $fn$;
    CREATE TRIGGER soak_log_delivery AFTER INSERT OR UPDATE ON ${schema}.deliveries
      FOR EACH ROW EXECUTE FUNCTION ${soakSchema}.log_delivery();
    -- The keyed writers' truth: each key's latest committed version (see writers.ts).
    CREATE TABLE ${soakSchema}.accounts (key text PRIMARY KEY, version int NOT NULL);
    CREATE TABLE ${soakSchema}.${KEYED_CHANNELS.trigger} (id int PRIMARY KEY, version int NOT NULL);
  `);
  // Changes of soak.rows become notifications through the trigger `triggers add` installs.
  const trigger = await runCli(
    [
      'triggers',
      'add',
      `${soakSchema}.${KEYED_CHANNELS.trigger}`,
      '--channel',
      KEYED_CHANNELS.trigger,
    ],
    { env: directEnv, timeoutMs: 60_000 },
  );
  if (trigger.code !== 0) throw new Error(`triggers add failed: ${trigger.stderr}`);

  const redisClient = new Redis(redis.url, {
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    commandTimeout: 3000,
    retryStrategy: () => 200,
  });
  redisClient.on('error', () => undefined);

  return {
    postgres,
    redis,
    pgProxy,
    redisProxy,
    schema,
    soakSchema,
    prefix,
    dir,
    consumersDir,
    logsDir,
    bridgeEnv,
    directEnv,
    pool,
    redisClient,
    async dumpTables() {
      const tables = {
        handled: `SELECT * FROM ${soakSchema}.handled ORDER BY seq`,
        ledger_log: `SELECT l.*, pg_xact_commit_timestamp(l.xmin) AS committed_at FROM ${soakSchema}.ledger_log l`,
        deliveries: `SELECT * FROM ${schema}.deliveries`,
        notifications: `SELECT id, channel, key, xid::text, created_at, bridged_at FROM ${schema}.notifications ORDER BY id`,
        subscriptions: `SELECT * FROM ${schema}.subscriptions`,
      };
      for (const [name, sql] of Object.entries(tables)) {
        const { rows } = await pool.query(sql);
        writeFileSync(
          join(logsDir, `${name}.jsonl`),
          rows.map((r) => JSON.stringify(r)).join('\n'),
        );
      }
    },
    async destroy(keepDir) {
      redisClient.disconnect();
      await pool.end().catch(() => undefined);
      await Promise.all([pgProxy.close(), redisProxy.close()]);
      await Promise.all([postgres.destroy(), redis.destroy()]);
      if (!keepDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}
