import { installedVersion, latestVersion } from '../db/migrate.js';
import type { Queryable } from '../db/store.js';
import { PgqError } from '../errors.js';
import type { Logger } from '../log.js';
import { checkEvictionPolicy, type RedisConnection } from '../redis.js';
import { errorMessage, withTimeout } from '../util.js';
import { redactSecrets } from '../log.js';

/**
 * Refuses to run against a schema older than this code (or none at all): queries would fail
 * later in confusing ways, so say what to do now.
 */
export async function assertSchemaCurrent(db: Queryable, schema: string): Promise<void> {
  const installed = await installedVersion(db, schema);
  const needed = latestVersion();
  if (installed === 0) {
    throw new PgqError(
      'PGQ_SCHEMA_MISSING',
      `pgq-bridge schema "${schema}" is not installed: run pgq-bridge migrate`,
    );
  }
  if (installed < needed) {
    throw new PgqError(
      'PGQ_SCHEMA_OUTDATED',
      `pgq-bridge schema "${schema}" is at version ${installed}, this pgq-bridge needs ${needed}: run pgq-bridge migrate`,
    );
  }
}

/** Options of {@link runStartupChecks}. */
export interface StartupCheckOptions {
  schema: string;
  db: Queryable;
  redis?: RedisConnection;
  log: Logger;
  /** Refuse (throw) when Redis may evict jobs, instead of only warning. */
  strict?: boolean;
  /** Bound on each check, in ms (default 5 s). */
  timeoutMs?: number;
}

function isDefinite(error: unknown): boolean {
  return error instanceof PgqError && error.code !== 'PGQ_TIMEOUT';
}

/**
 * The checks every long-running command does before it starts: the schema is current, and Redis
 * does not evict (BullMQ needs `noeviction`). A finding throws a `PgqError` (or, for the eviction
 * policy without `strict`, logs at error level). A server that cannot be reached is not a
 * finding: the check is skipped with a warning, because the services retry connections anyway.
 */
export async function runStartupChecks(options: StartupCheckOptions): Promise<void> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const guard = async (what: string, check: () => Promise<unknown>): Promise<void> => {
    try {
      await withTimeout(check(), timeoutMs, `${what} did not finish`);
    } catch (error) {
      if (isDefinite(error)) throw error;
      options.log.warn(
        { check: what, err: redactSecrets(errorMessage(error)) },
        'startup check skipped: server not reachable yet',
      );
    }
  };
  await guard('schema-version', () => assertSchemaCurrent(options.db, options.schema));
  const redis = options.redis;
  if (redis) {
    await guard('redis-eviction', () =>
      checkEvictionPolicy(redis, options.log, { strict: options.strict }),
    );
  }
}
