import { pino, type LevelWithSilent, type LogFn, type Logger } from 'pino';

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

/** `scheme://user:PASSWORD@` (the userinfo ends at the last `@` before the host: passwords may hold `@`). */
const URL_PASSWORD = /([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:)[^/?#\s]*@/gi;
/**
 * `password=...` / `sslpassword=...` as a URL query parameter (`postgres://app@db/x?password=`,
 * `redis://host?password=`) or a libpq keyword/value pair (`host=db password=...`), quoted or not.
 */
const PARAMETER_PASSWORD = /(\b(?:ssl)?pass(?:word)?\s*=\s*)('[^']*'|"[^"]*"|[^&\s'"]+)/gi;

/**
 * Replaces every password inside `text` by `***`, in each form pg and ioredis accept:
 * `postgres://user:pass@host`, `postgres://user@host/db?password=pass` (and `&password=`,
 * `sslpassword=`), keyword/value strings (`password=pass`), `redis://:pass@host`,
 * `rediss://user:pass@host`, `redis://host?password=pass`, and lists of them (Redis Cluster
 * nodes). Used on every connection string and on every error message and log line that may quote
 * one.
 */
export function redactSecrets(text: string): string {
  return text.replace(URL_PASSWORD, '$1***@').replace(PARAMETER_PASSWORD, '$1***');
}

/** `value` with {@link redactSecrets} applied to every string in it (two levels deep: log fields). */
function redactFields(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactSecrets(value);
  if (depth > 1 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => redactFields(v, depth + 1));
  if (value instanceof Error)
    return redactFields({ message: value.message, name: value.name }, depth);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>))
    out[k] = redactFields(v, depth + 1);
  return out;
}

/** Creates the pino logger used by every command; secrets in known fields are redacted. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? 'info';
  const redact = {
    paths: ['password', '*.password', 'databaseUrl', 'listenDatabaseUrl', 'redisUrl'],
    censor: (value: unknown) => (typeof value === 'string' ? redactSecrets(value) : '***'),
  };
  // Every field and the message go through redactSecrets, not only the fields named above: an
  // error message quoting a connection string (a driver's, a user's handler's) is logged as is
  // in many places, and one forgotten call must not print a password.
  const formatters = {
    log: (fields: Record<string, unknown>) => redactFields(fields) as Record<string, unknown>,
  };
  const hooks = {
    logMethod(args: Parameters<LogFn>, method: LogFn): void {
      const redacted = args.map((a: unknown) => (typeof a === 'string' ? redactSecrets(a) : a));
      method.apply(this, redacted as Parameters<LogFn>);
    },
  };
  if (options.format === 'pretty') {
    return pino({
      level,
      redact,
      formatters,
      hooks,
      transport: { target: 'pino-pretty', options: { colorize: true, destination: 1 } },
    });
  }
  return pino(
    { level, redact, formatters, hooks, base: { pid: process.pid } },
    options.destination ?? pino.destination({ fd: 1, sync: true }),
  );
}

/** A logger that drops everything; the default for library use without a logger. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
