import { Command, InvalidArgumentError } from 'commander';
import pg from 'pg';
import { sessionSettings, type SessionRole } from '../db/pool.js';
import { PgqError } from '../errors.js';
import { redactSecrets } from '../log.js';
import { errorMessage } from '../util.js';
import { resolveConfig, type ResolvedConfig, type SettingFlags } from '../config.js';
import { createLogger, type Logger } from '../log.js';

/** What every command's action gets: resolved settings and a logger. */
export interface CommandContext {
  config: ResolvedConfig;
  log: Logger;
}

/** Resolves settings from the command's flags (and its parents'), env and config file. */
export async function commandContext(command: Command): Promise<CommandContext> {
  const opts = command.optsWithGlobals<SettingFlags>();
  const config = await resolveConfig({
    flags: {
      databaseUrl: opts.databaseUrl,
      listenDatabaseUrl: opts.listenDatabaseUrl,
      redisUrl: opts.redisUrl,
      redisCluster: opts.redisCluster,
      schema: opts.schema,
      prefix: opts.prefix,
      inlinePayloadLimit: opts.inlinePayloadLimit,
      config: opts.config,
      logLevel: opts.logLevel,
      logFormat: opts.logFormat,
    },
    isTTY: process.stdout.isTTY === true,
  });
  const log = createLogger({ level: config.logLevel, format: config.logFormat });
  return { config, log };
}

/** Commander parser for a positive integer option. */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError('expected a positive integer.');
  }
  return n;
}

/** Commander parser for a non-negative number (seconds may be fractional). */
export function nonNegativeNumber(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) {
    throw new InvalidArgumentError('expected a number >= 0.');
  }
  return n;
}

/** Commander parser for a comma-separated list (repeatable: later lists are appended). */
export function list(value: string, previous: string[] | undefined): string[] {
  const items = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (items.length === 0) throw new InvalidArgumentError('expected a comma-separated list.');
  return [...(previous ?? []), ...items];
}

/**
 * Runs a long-lived service until SIGINT/SIGTERM (or until `stopRequested` resolves, e.g. a
 * supervisor's request), then stops it gracefully. A second signal forces the exit.
 */
export function runUntilSignal(
  log: Logger,
  stop: () => Promise<void>,
  stopRequested?: Promise<string>,
): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (signal: string): void => {
      // A request while already stopping (e.g. Ctrl-C reached the whole process group) is no
      // reason to abandon the drain; only a second real signal is.
      if (stopping && !signal.startsWith('SIG')) return;
      if (stopping) {
        log.warn({ signal }, 'second signal: exiting at once');
        process.exit(130);
      }
      stopping = true;
      log.info({ signal }, 'stopping gracefully');
      stop().then(
        () => {
          log.info('stopped');
          resolve(0);
        },
        (error: unknown) => {
          log.error({ err: error instanceof Error ? error.message : String(error) }, 'stop failed');
          resolve(1);
        },
      );
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    void stopRequested?.then(onSignal);
  });
}

/**
 * Connects a one-shot command to Postgres, failing within 10 s (not the OS's TCP timeout) with a
 * message that names the server (password redacted). The session is bounded as `role` says.
 */
export async function connectPostgres(
  url: string,
  applicationName: string,
  role: SessionRole = 'command',
): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: 10_000,
    application_name: applicationName,
    ...sessionSettings(role),
  });
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => undefined);
    throw new PgqError(
      'PGQ_POSTGRES_UNREACHABLE',
      `cannot connect to Postgres at ${redactSecrets(url)}: ${errorMessage(error)}`,
    );
  }
  return client;
}
