import { UsageError } from './errors.js';

/** Channel names: 1–63 bytes of `[A-Za-z0-9_.:-]` (the same rule the SQL `notify()` enforces). */
export const CHANNEL_PATTERN = /^[A-Za-z0-9_.:-]{1,63}$/;
/** Consumer ids: 1–64 characters of `[A-Za-z0-9_-]`; also the BullMQ queue name. */
export const CONSUMER_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
/** Schema names we accept: a plain SQL identifier, so it never needs to be guessed at. */
export const SCHEMA_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
/** BullMQ key prefixes: no spaces or quotes; braces allowed for Redis Cluster hash tags. */
export const PREFIX_PATTERN = /^[A-Za-z0-9_.:{}-]{1,64}$/;

function describe(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

/** Throws a {@link UsageError} unless `channel` is a valid channel name. */
export function assertChannel(channel: unknown): asserts channel is string {
  if (typeof channel !== 'string' || !CHANNEL_PATTERN.test(channel)) {
    throw new UsageError(
      `invalid channel name ${describe(channel)}: use 1-63 characters of A-Z a-z 0-9 _ . : -`,
      'PGQ_INVALID_CHANNEL',
    );
  }
}

/** Throws a {@link UsageError} unless `id` is a valid consumer id. */
export function assertConsumerId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !CONSUMER_ID_PATTERN.test(id)) {
    throw new UsageError(
      `invalid consumer id ${describe(id)}: use 1-64 characters of A-Z a-z 0-9 _ -`,
      'PGQ_INVALID_CONSUMER_ID',
    );
  }
}

/** Quotes an SQL identifier (doubling embedded quotes), for names that passed validation. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
