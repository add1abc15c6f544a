import { UnrecoverableError } from 'bullmq';

/**
 * Errors raised by pgq-bridge. Each carries a stable `code` (`PGQ_...`) so callers can branch on it
 * without parsing messages.
 */

/** Base class of every error pgq-bridge raises on purpose. */
export class PgqError extends Error {
  /** Stable machine-readable code, e.g. `PGQ_INVALID_CHANNEL`. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PgqError';
    this.code = code;
  }
}

/** A setting, flag or argument is invalid. The CLI exits with code 2 for these. */
export class UsageError extends PgqError {
  constructor(message: string, code = 'PGQ_USAGE') {
    super(code, message);
    this.name = 'UsageError';
  }
}

/** A setting (from defaults, config file, environment or flags) is invalid. */
export class ConfigError extends UsageError {
  constructor(message: string) {
    super(message, 'PGQ_CONFIG');
    this.name = 'ConfigError';
  }
}

/**
 * Throw from a handler to fail the job at once, without further attempts. The job stays failed
 * in BullMQ (a dead letter, replayable with `reconcile --failed`).
 */
export class PermanentError extends UnrecoverableError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message);
    if (options?.cause !== undefined) (this as { cause?: unknown }).cause = options.cause;
    // BullMQ recognizes unrecoverable errors by class or by this name.
    this.name = 'UnrecoverableError';
  }
}
