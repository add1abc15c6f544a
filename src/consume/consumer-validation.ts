import { UsageError } from '../errors.js';
import { assertChannel, assertConsumerId } from '../identifiers.js';
import type { ConsumerDefinition } from './consumers.js';

function positiveInteger(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value > 0;
}

/** Checks a consumer definition; `where` names its source in error messages. */
export function validateConsumer(value: unknown, where: string): ConsumerDefinition {
  if (value === null || typeof value !== 'object') {
    throw new UsageError(
      `${where}: a consumer definition must be an object`,
      'PGQ_INVALID_CONSUMER',
    );
  }
  const def = value as Record<string, unknown>;
  const fail = (message: string): never => {
    throw new UsageError(
      `${where}: consumer ${JSON.stringify(def.id)}: ${message}`,
      'PGQ_INVALID_CONSUMER',
    );
  };
  try {
    assertConsumerId(def.id);
  } catch (error) {
    throw new UsageError(`${where}: ${(error as Error).message}`, 'PGQ_INVALID_CONSUMER');
  }
  if (!Array.isArray(def.channels) || def.channels.length === 0)
    fail('channels must be a non-empty array');
  for (const channel of def.channels as unknown[]) {
    const name =
      typeof channel === 'object' && channel !== null
        ? (channel as { name?: unknown }).name
        : channel;
    try {
      assertChannel(name);
    } catch (error) {
      fail((error as Error).message);
    }
  }
  if (def.batch !== undefined) {
    const batch = def.batch as Record<string, unknown> | null;
    if (
      !batch ||
      !positiveInteger(batch.size) ||
      typeof batch.maxWaitMs !== 'number' ||
      batch.maxWaitMs < 0
    ) {
      fail('batch must be { size: positive integer, maxWaitMs: number >= 0 }');
    }
    // With a plain `handle` instead, notifications travel packed (consume/packed-runner.ts).
    if (typeof def.handleBatch !== 'function' && typeof def.handle !== 'function')
      fail('a batch consumer needs handleBatch(notifications, job) or handle(notification, job)');
  } else if (typeof def.handle !== 'function') {
    fail('handle(notification, job) must be a function');
  }
  for (const key of ['concurrency', 'attempts'] as const) {
    if (def[key] !== undefined && !positiveInteger(def[key]))
      fail(`${key} must be a positive integer`);
  }
  for (const key of ['lockDuration', 'stalledInterval'] as const) {
    if (def[key] !== undefined && !positiveInteger(def[key])) {
      fail(`${key} must be a positive integer (ms)`);
    }
  }
  if (def.transactional !== undefined && typeof def.transactional !== 'boolean') {
    fail('transactional must be true or false');
  }
  if (def.timeout !== undefined && !positiveInteger(def.timeout))
    fail('timeout must be a positive integer (ms)');
  if (def.startFrom !== undefined && def.startFrom !== 'beginning' && def.startFrom !== 'now') {
    fail(`startFrom must be 'beginning' or 'now'`);
  }
  validateOrdered(def.ordered, fail);
  return def as unknown as ConsumerDefinition;
}

/** Checks `ordered` (see {@link ConsumerOptions.ordered}). */
function validateOrdered(ordered: unknown, fail: (m: string) => never): void {
  if (ordered === undefined || ordered === false) return;
  if (ordered !== true) {
    const mode =
      typeof ordered === 'object' && ordered !== null
        ? (ordered as { onDeadLetter?: unknown }).onDeadLetter
        : null;
    if (mode !== undefined && mode !== 'block' && mode !== 'skip') {
      fail(`ordered must be true, false or { onDeadLetter: 'block' | 'skip' }`);
    }
  }
}

/** Checks a list of definitions, refusing duplicate ids. */
export function validateConsumers(
  entries: { value: unknown; where: string }[],
): ConsumerDefinition[] {
  const seen = new Map<string, string>();
  return entries.map(({ value, where }) => {
    const def = validateConsumer(value, where);
    const previous = seen.get(def.id);
    if (previous) {
      throw new UsageError(
        `duplicate consumer id ${JSON.stringify(def.id)} in ${where} (also in ${previous})`,
        'PGQ_DUPLICATE_CONSUMER',
      );
    }
    seen.set(def.id, where);
    return def;
  });
}
