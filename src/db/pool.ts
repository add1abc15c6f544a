import pg from 'pg';
import { redactSecrets, type Logger } from '../log.js';

/**
 * A `pg` Pool for one of pgq-bridge's long-lived components. Idle connections that die (a
 * Postgres restart) emit `error` on the pool; without a listener that would crash the process,
 * so it is logged instead and the pool reconnects on next use.
 */
export function createPool(config: pg.PoolConfig, log: Logger): pg.Pool {
  const pool = new pg.Pool(config);
  pool.on('error', (error) =>
    log.warn({ err: redactSecrets(error.message) }, 'idle Postgres connection failed'),
  );
  return pool;
}
