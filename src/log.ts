import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/** Log output format: one JSON object per line, or human-friendly colored lines. */
export type LogFormat = 'json' | 'pretty';

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  level?: LevelWithSilent;
  format?: LogFormat;
  /** Where JSON lines go; defaults to stdout. */
  destination?: NodeJS.WritableStream;
}

/**
 * Replaces the password of every URL with credentials inside `text` by `***`.
 * Used on every connection string and on every error message that may quote one.
 */
export function redactSecrets(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:)([^@/?#\s]*)@/gi, '$1***@');
}

/** Creates the pino logger used by every command; secrets in known fields are redacted. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? 'info';
  const redact = {
    paths: ['password', '*.password', 'databaseUrl', 'listenDatabaseUrl', 'redisUrl'],
    censor: (value: unknown) => (typeof value === 'string' ? redactSecrets(value) : '***'),
  };
  if (options.format === 'pretty') {
    return pino({
      level,
      redact,
      transport: { target: 'pino-pretty', options: { colorize: true, destination: 1 } },
    });
  }
  return pino(
    { level, redact, base: { pid: process.pid } },
    options.destination ?? pino.destination({ fd: 1, sync: true }),
  );
}

/** A logger that drops everything; the default for library use without a logger. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
