import type pg from 'pg';
import { PgqError } from '../errors.js';

/** The third argument of every handler (`handle(n, job, ctx)`, `handleBatch(ns, job, ctx)`). */
export interface HandlerContext {
  /**
   * Aborted when the attempt times out (the consumer's `timeout`) or when the process stops past
   * its shutdown timeout. Pass it on (`fetch(url, { signal })`) or check `signal.aborted`: the
   * attempt's slot stays taken until the handler's promise settles, so a handler that ignores it
   * only delays its own retry.
   */
  signal: AbortSignal;
}

/**
 * The `ctx` of a transactional consumer's handler (`transactional: true`): `db` is a client inside
 * the attempt's transaction on the pgq-bridge database. Write the handler's effects through it:
 * they commit together with the delivery's ledger row, exactly once, or roll back with it. Do not
 * release it, commit it or roll it back yourself.
 */
export interface TransactionalHandlerContext extends HandlerContext {
  db: pg.PoolClient;
}

/** Error of an attempt that outlived the consumer's `timeout` (code `PGQ_TIMEOUT`). */
export class HandlerTimeoutError extends PgqError {
  constructor(what: string, ms: number) {
    super('PGQ_TIMEOUT', `${what} timed out (after ${ms} ms)`);
    this.name = 'HandlerTimeoutError';
  }
}

/** Error a handler's signal carries when the process stops past its shutdown timeout. */
export class ShutdownAbortError extends PgqError {
  constructor() {
    super('PGQ_SHUTDOWN', 'the worker is stopping past its shutdown timeout');
    this.name = 'ShutdownAbortError';
  }
}

/** Options of one {@link Attempts.run}. */
export interface AttemptOptions {
  /** The consumer's `timeout` (ms); undefined: no limit. */
  timeoutMs: number | undefined;
  /** Names the handler in the timeout error (`handler of orders`). */
  what: string;
  /** Called when the timeout fires (the handler still runs; its slot stays taken). */
  onTimeout?: () => void;
}

/**
 * Runs handler attempts with a cancellation signal each, and aborts them all at shutdown.
 *
 * Why not a race: a timeout that only stops waiting leaves the handler running while BullMQ
 * starts the retry, so two runs of one delivery overlap. Here the attempt's promise settles only
 * when the handler's does: BullMQ keeps the job active (its lock renewed, its concurrency slot
 * taken) and starts no retry meanwhile. The timeout aborts the signal and turns the attempt's
 * outcome into a {@link HandlerTimeoutError}, whatever the handler did after it.
 */
export class Attempts {
  /** Controllers of the attempts running now (aborted together by {@link abortAll}). */
  private readonly active = new Set<AbortController>();

  /**
   * Runs `call` with a fresh context. Resolves with its result, or rejects with its error, or
   * with a {@link HandlerTimeoutError} when it outlived `timeoutMs` (after it settled).
   */
  async run<T>(call: (ctx: HandlerContext) => T | Promise<T>, opts: AttemptOptions): Promise<T> {
    // One controller per attempt (not one shared signal): handlers add listeners to it, and a
    // shared signal would collect them from every attempt.
    const controller = new AbortController();
    this.active.add(controller);
    let timedOut: HandlerTimeoutError | undefined;
    const { timeoutMs } = opts;
    const timer = timeoutMs
      ? setTimeout(() => {
          timedOut = new HandlerTimeoutError(opts.what, timeoutMs);
          controller.abort(timedOut);
          opts.onTimeout?.();
        }, timeoutMs)
      : undefined;
    try {
      const result = await call({ signal: controller.signal });
      if (timedOut) throw timedOut;
      return result;
    } catch (error) {
      // A handler that rejects after its signal aborted (an AbortError) failed because of the
      // timeout: report that, so the retry and the log say why.
      throw timedOut ?? error;
    } finally {
      clearTimeout(timer);
      this.active.delete(controller);
    }
  }

  /** Attempts running now. */
  get running(): number {
    return this.active.size;
  }

  /** Aborts the signal of every running attempt (the process stops past its shutdown timeout). */
  abortAll(): void {
    const reason = new ShutdownAbortError();
    for (const controller of this.active) controller.abort(reason);
  }
}
