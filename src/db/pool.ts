import pg from 'pg';
import { redactSecrets, type Logger } from '../log.js';

/** What a Postgres session of pgq-bridge is for; each gets its own bounds (see {@link SESSION_LIMITS}). */
export type SessionRole =
  'listener' | 'wakeups' | 'worker' | 'reconcile' | 'operate' | 'migrate' | 'command';

/** Milliseconds; 0 means no limit (Postgres' own default). */
export interface SessionLimits {
  /** Longest a single statement may run. */
  statementMs: number;
  /** Longest a statement may wait for a lock (advisory locks included) before it fails. */
  lockMs: number;
  /** Longest a transaction may stay open with nothing running (a frozen or hung client). */
  idleInTransactionMs: number;
}

/**
 * Why these numbers: no wait of pgq-bridge is unbounded, so one stuck session (a `psql` holding
 * the subscriptions lock, a worker frozen mid-registration, a hung Redis under a bridge batch)
 * makes the others fail, log what they waited for and retry instead of hanging silently, and a
 * frozen pgq-bridge process never holds rows or locks for long.
 *
 * - listener: its claim takes milliseconds; a batch stays open while Redis takes the jobs (the
 *   enqueue timeout, 15 s by default, rolls it back); idle_in_transaction frees the rows if the
 *   process itself stalls.
 * - wakeups: the LISTEN session runs `LISTEN` and `SELECT 1` pings only.
 * - worker: registration (under the subscriptions lock) and ledger writes, both short.
 * - reconcile, cleanup, playback: keyset pages of a few thousand rows each.
 * - operate (status, board, metrics): read-only snapshots, polled: fail fast.
 * - migrate: DDL may run long (no statement limit) but waits for its locks at most 5 s at a
 *   time and retries (src/db/migrate.ts), so a queued ACCESS EXCLUSIVE request never stalls
 *   every writer behind it.
 * - command (notify, triggers, consumers): one-shot operator commands.
 */
export const SESSION_LIMITS: Readonly<Record<SessionRole, SessionLimits>> = {
  listener: { statementMs: 60_000, lockMs: 10_000, idleInTransactionMs: 60_000 },
  wakeups: { statementMs: 10_000, lockMs: 5_000, idleInTransactionMs: 10_000 },
  worker: { statementMs: 60_000, lockMs: 10_000, idleInTransactionMs: 60_000 },
  reconcile: { statementMs: 120_000, lockMs: 10_000, idleInTransactionMs: 60_000 },
  operate: { statementMs: 15_000, lockMs: 5_000, idleInTransactionMs: 15_000 },
  migrate: { statementMs: 0, lockMs: 5_000, idleInTransactionMs: 60_000 },
  command: { statementMs: 60_000, lockMs: 10_000, idleInTransactionMs: 60_000 },
};

/** The `pg` connection settings that put a session under its role's limits. */
export function sessionSettings(
  role: SessionRole,
): Pick<
  pg.ClientConfig,
  'statement_timeout' | 'lock_timeout' | 'idle_in_transaction_session_timeout'
> {
  const limits = SESSION_LIMITS[role];
  return {
    statement_timeout: limits.statementMs,
    lock_timeout: limits.lockMs,
    idle_in_transaction_session_timeout: limits.idleInTransactionMs,
  };
}

/**
 * A `pg` Pool for one of pgq-bridge's long-lived components, its sessions bounded by `role`
 * ({@link SESSION_LIMITS}; `config` may override a limit). Idle connections that die (a
 * Postgres restart) emit `error` on the pool; without a listener that would crash the process,
 * so it is logged instead and the pool reconnects on next use.
 */
export function createPool(config: pg.PoolConfig, log: Logger, role?: SessionRole): pg.Pool {
  const pool = new pg.Pool({ ...(role ? sessionSettings(role) : {}), ...config });
  pool.on('error', (error) =>
    log.warn({ err: redactSecrets(error.message) }, 'idle Postgres connection failed'),
  );
  return pool;
}
