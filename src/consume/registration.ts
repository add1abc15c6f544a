import type pg from 'pg';
import pRetry from 'p-retry';
import { CONSUMER_DEFAULTS, channelNames, type ConsumerDefinition } from './consumers.js';
import { jobOptionsOf } from './fetchers.js';
import type { ConsumerRegistration, Store } from '../db/store.js';
import { redactSecrets, type Logger } from '../log.js';
import { errorMessage } from '../util.js';

/** A subscription created by a registration (see `Store.registerConsumers`). */
export type CreatedSubscription = Awaited<ReturnType<Store['registerConsumers']>>[number];

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
  return {
    id: def.id,
    channels: channelNames(def),
    jobOptions: jobOptionsOf(def),
    batch: def.batch ?? null,
    startFrom: def.startFrom ?? CONSUMER_DEFAULTS.startFrom,
    worker: workerName,
  };
}

/**
 * Registers the consumers in Postgres, retrying (with backoff, for ever) until it can: a worker
 * started before its database is up waits for it. Returns the subscriptions this call created,
 * or [] when stopped (`signal`) while still retrying, a graceful stop, not a failure.
 */
export async function registerConsumers(
  defs: readonly ConsumerDefinition[],
  deps: RegistrationDeps,
): Promise<CreatedSubscription[]> {
  const registrations = defs.map((def) => registrationOf(def, deps.workerName));
  return pRetry(
    async () => {
      const client = await deps.pool.connect();
      // Checked-out clients have no pool 'error' listener; a dying connection must not crash us.
      let broken: Error | undefined;
      const onError = (error: Error): void => {
        broken = error;
      };
      client.on('error', onError);
      try {
        return await deps.store.registerConsumers(client, registrations);
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
}
