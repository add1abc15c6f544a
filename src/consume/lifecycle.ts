import { createHash } from 'node:crypto';
import { CONSUMER_DEFAULTS, channelNames, type ConsumerDefinition } from './consumers.js';
import type { RegistrationResult } from '../db/registration.js';
import type { Logger } from '../log.js';

/** Object keys sorted at every level, so equal definitions serialize (and hash) equally. */
function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * What a definition says beyond its job options, as `consumers list` shows it. Read loosely:
 * `ordered` and `transactional` are options of their own features.
 */
export function settingsOf(def: ConsumerDefinition): Record<string, unknown> {
  const loose = def as unknown as Record<string, unknown>;
  return {
    ordered: loose.ordered ?? false,
    transactional: loose.transactional ?? false,
    concurrency: def.concurrency ?? CONSUMER_DEFAULTS.concurrency,
    timeout: def.timeout ?? null,
    startFrom: def.startFrom ?? CONSUMER_DEFAULTS.startFrom,
  };
}

/**
 * The identity of a definition in the registration history: a hash of its channels (as a set),
 * job options, batch settings and {@link settingsOf}. Two replicas of one version share it; a
 * version that changes any of these has a new one.
 */
export function fingerprintOf(
  def: ConsumerDefinition,
  jobOptions: Record<string, unknown>,
): string {
  const identity = stableJson({
    channels: [...new Set(channelNames(def))].sort(),
    jobOptions,
    batch: def.batch ?? null,
    settings: settingsOf(def),
  });
  return createHash('sha256').update(identity).digest('hex').slice(0, 32);
}

/** Logs what each registration kept or refused, so a rolling deploy can be followed in the logs. */
export function logRegistrations(log: Logger, results: readonly RegistrationResult[]): void {
  for (const r of results) {
    if (r.retired) {
      log.error(
        { consumer: r.consumerId },
        'consumer was retired (pgq-bridge consumers remove) after this definition was registered; ' +
          'not starting its worker (a changed definition registers it again)',
      );
      continue;
    }
    if (r.kept.length > 0) {
      log.info(
        { consumer: r.consumerId, keptChannels: r.kept },
        'keeping subscriptions this definition does not list (another version may; remove them ' +
          'with pgq-bridge consumers remove --channels); their jobs are left for workers that list them',
      );
    }
    if (r.removedByOperator.length > 0) {
      log.warn(
        { consumer: r.consumerId, channels: r.removedByOperator },
        'not subscribing channels removed by pgq-bridge consumers remove after this definition was registered',
      );
    }
    if (r.options === 'kept-newer') {
      log.warn(
        { consumer: r.consumerId },
        'an older definition of this consumer: the job options of the newer one stay in force',
      );
    } else if (r.options === 'reinstated') {
      log.warn(
        { consumer: r.consumerId },
        'no worker ran the newer definition of this consumer for a while: its job options are back in force (rollback)',
      );
    }
  }
}
