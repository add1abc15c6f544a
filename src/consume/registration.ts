import type pg from 'pg';
import { touchDefinitions as touchDefinitionRows } from '../db/registration.js';
import type { Queryable } from '../db/store.js';
import pRetry from 'p-retry';
import { CONSUMER_DEFAULTS, channelNames, type ConsumerDefinition } from './consumers.js';
import { jobOptionsOf } from './fetchers.js';
import type { ConsumerRegistration, RegistrationResult, Store } from '../db/store.js';
import { fingerprintOf, logRegistrations, settingsOf } from './lifecycle.js';
import { redactSecrets, type Logger } from '../log.js';
import { errorMessage } from '../util.js';
import { OrderingSql } from '../db/ordering.js';
import { deadLetterModeOf } from './ordering.js';

/** What {@link registerConsumers} needs. */
export interface RegistrationDeps {
  store: Store;
  pool: pg.Pool;
  log: Logger;
  /** Name recorded as the consumers' last seen worker. */
  workerName: string;
  /** Stops the retries (SIGINT/SIGTERM while Postgres is unreachable). */
  signal: AbortSignal;
}

/** What a `work` process registers in Postgres for a consumer definition. */
export function registrationOf(def: ConsumerDefinition, workerName: string): ConsumerRegistration {
  const jobOptions = jobOptionsOf(def);
  return {
    id: def.id,
    channels: channelNames(def),
    jobOptions,
    batch: def.batch ?? null,
    startFrom: def.startFrom ?? CONSUMER_DEFAULTS.startFrom,
    worker: workerName,
    fingerprint: fingerprintOf(def, jobOptions),
    settings: settingsOf(def),
  };
}

/**
 * Registers the consumers in Postgres, retrying (with backoff, for ever) until it can: a worker
 * started before its database is up waits for it, and one that waits for the subscriptions lock
 * longer than its `lock_timeout` logs it and tries again. Logs what each registration kept (the
 * subscriptions it does not list) and whose job options are in force. Returns what each
 * registration did, or [] when stopped (`signal`) while still retrying, a graceful stop, not a
 * failure.
 */
export async function registerConsumers(
  defs: readonly ConsumerDefinition[],
  deps: RegistrationDeps,
): Promise<RegistrationResult[]> {
  const registrations = defs.map((def) => registrationOf(def, deps.workerName));
  const results = await pRetry(
    async () => {
      const client = await deps.pool.connect();
      // Checked-out clients have no pool 'error' listener; a dying connection must not crash us.
      let broken: Error | undefined;
      const onError = (error: Error): void => {
        broken = error;
      };
      client.on('error', onError);
      try {
        const created = await deps.store.registerConsumers(client, registrations);
        // Status and the board read which consumers are ordered (and how) from Postgres.
        await new OrderingSql(deps.store.schema).setOrdering(
          client,
          defs.map((def) => ({ id: def.id, ordered: deadLetterModeOf(def) })),
        );
        return created;
      } finally {
        client.removeListener('error', onError);
        client.release(broken);
      }
    },
    {
      retries: Infinity,
      minTimeout: 1000,
      maxTimeout: 30_000,
      signal: deps.signal,
      onFailedAttempt: ({ error, attemptNumber }) =>
        deps.log.warn(
          { err: redactSecrets(errorMessage(error)), attempt: attemptNumber },
          'registering consumers failed; retrying',
        ),
    },
  ).catch((error: unknown) => {
    if (deps.signal.aborted) return [];
    throw error;
  });
  logRegistrations(deps.log, results);
  return results;
}

/**
 * Heartbeat of a `work` process: the consumers (and the definitions of them it runs) were seen
 * now. `consumers list` shows it; a definition not seen for a while can be superseded again.
 */
export async function touchDefinitions(
  db: Queryable,
  schema: string,
  defs: readonly ConsumerDefinition[],
  workerName: string,
): Promise<void> {
  const seen = defs.map((def) => ({
    id: def.id,
    fingerprint: fingerprintOf(def, jobOptionsOf(def)),
  }));
  await touchDefinitionRows(db, schema, seen, workerName);
}
