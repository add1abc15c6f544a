import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { ConfigError } from './errors.js';
import { PREFIX_PATTERN, SCHEMA_PATTERN } from './identifiers.js';
import { importUserFile } from './consume/load-module.js';
import { redactSecrets, type LogFormat } from './log.js';
import { checkRedisUrl, checkUrl, parseBoolean, parseByteSize } from './config-values.js';
import type { ConsumerDefinition } from './consume/consumers.js';

/** Log levels accepted by `--log-level` / `LOG_LEVEL`. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The global settings of SPEC.md, fully resolved. */
export interface Settings {
  /** Postgres URL for queries. */
  databaseUrl: string;
  /** Postgres URL for the LISTEN connection (direct, not via a transaction pooler). */
  listenDatabaseUrl: string;
  /** Redis URL for BullMQ; several comma-separated node URLs mean a Redis Cluster. */
  redisUrl: string;
  /** Treat `redisUrl` as a Redis Cluster seed even when it is one URL (`--redis-cluster`). */
  redisCluster?: boolean;
  /** Schema holding pgq-bridge's tables and functions. */
  schema: string;
  /** BullMQ key prefix. */
  prefix: string;
  /**
   * Payloads larger than this many bytes (JSON text) are not copied into every consumer's job:
   * the job carries the notification id and the worker reads the payload from the row. Default
   * {@link DEFAULT_INLINE_PAYLOAD_LIMIT} (64 KiB); used by `listen`, `reconcile` and `start`.
   */
  inlinePayloadLimit?: number;
  logLevel: LogLevel;
  logFormat: LogFormat;
}

/**
 * A config file's contents: the settings in camelCase (all optional) plus the consumers,
 * either inline or as a directory to load them from.
 */
export interface ConfigInput extends Partial<Settings> {
  /** Consumer definitions run by `work`. */
  consumers?: ConsumerDefinition[];
  /** Directory of consumer files (relative paths resolve against the config file's directory). */
  consumersDir?: string;
}

/** Settings plus what the config file contributed. */
export interface ResolvedConfig extends Settings {
  consumers?: ConsumerDefinition[];
  consumersDir?: string;
  /** Absolute path of the config file that was loaded, if any. */
  configFile?: string;
}

/**
 * Identity helper that types a config file:
 * `export default defineConfig({ databaseUrl: ..., consumers: [...] })`.
 */
export function defineConfig(config: ConfigInput): ConfigInput {
  return config;
}

/** Defaults of SPEC.md. */
export const DEFAULTS = {
  databaseUrl: 'postgres://postgres@localhost:5432/postgres',
  redisUrl: 'redis://127.0.0.1:6379',
  schema: 'pgq_bridge',
  prefix: 'pgq',
  logLevel: 'info',
} as const;

/** Default of `--inline-payload-limit`: 64 KiB. */
export const DEFAULT_INLINE_PAYLOAD_LIMIT = 64 * 1024;

/** The inline payload limit of these settings (the default when unset). */
export function inlinePayloadLimitOf(settings: Pick<Settings, 'inlinePayloadLimit'>): number {
  return settings.inlinePayloadLimit ?? DEFAULT_INLINE_PAYLOAD_LIMIT;
}

const CONFIG_FILE_NAMES = [
  'pgq-bridge.config.ts',
  'pgq-bridge.config.mts',
  'pgq-bridge.config.js',
  'pgq-bridge.config.mjs',
];

/** Settings given as flags (already in camelCase); undefined means "not given". */
export interface SettingFlags {
  databaseUrl?: string;
  listenDatabaseUrl?: string;
  redisUrl?: string;
  /** `--redis-cluster` (a boolean flag) or env REDIS_CLUSTER (`1`, `true`, `yes`). */
  redisCluster?: boolean | string;
  schema?: string;
  prefix?: string;
  /** `--inline-payload-limit` / env PGQ_INLINE_PAYLOAD_LIMIT: bytes, or with a unit (`64KiB`). */
  inlinePayloadLimit?: string | number;
  config?: string;
  logLevel?: string;
  logFormat?: string;
}

/** Inputs of {@link resolveConfig}; each defaults to the process's own. */
export interface ResolveOptions {
  flags?: SettingFlags;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Whether stdout is a terminal (picks the `pretty` log format by default). */
  isTTY?: boolean;
}

/** Maps env variable names to settings. */
const ENV_NAMES: Record<string, keyof SettingFlags> = {
  DATABASE_URL: 'databaseUrl',
  LISTEN_DATABASE_URL: 'listenDatabaseUrl',
  REDIS_URL: 'redisUrl',
  REDIS_CLUSTER: 'redisCluster',
  PGQ_SCHEMA: 'schema',
  PGQ_PREFIX: 'prefix',
  PGQ_INLINE_PAYLOAD_LIMIT: 'inlinePayloadLimit',
  PGQ_CONFIG: 'config',
  LOG_LEVEL: 'logLevel',
  LOG_FORMAT: 'logFormat',
};

function fromEnv(env: NodeJS.ProcessEnv): SettingFlags {
  const out: SettingFlags = {};
  for (const [name, key] of Object.entries(ENV_NAMES)) {
    const value = env[name];
    if (value !== undefined && value !== '') out[key] = value;
  }
  return out;
}

function definedOnly<T extends object>(obj: T): Partial<T> {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined)) as Partial<T>;
}

async function loadConfigFile(
  explicit: string | undefined,
  cwd: string,
): Promise<{ file?: string; config: ConfigInput }> {
  let file: string | undefined;
  if (explicit) {
    file = isAbsolute(explicit) ? explicit : resolve(cwd, explicit);
    if (!existsSync(file)) throw new ConfigError(`config: file not found: ${file}`);
  } else {
    file = CONFIG_FILE_NAMES.map((name) => resolve(cwd, name)).find((path) => existsSync(path));
    if (!file) return { config: {} };
  }
  let mod: Record<string, unknown>;
  try {
    mod = await importUserFile(file);
  } catch (error) {
    throw new ConfigError(
      `config: cannot load ${file}: ${redactSecrets(error instanceof Error ? error.message : String(error))}`,
    );
  }
  const config = mod.default ?? mod;
  if (config === null || typeof config !== 'object' || Array.isArray(config)) {
    throw new ConfigError(`config: ${file} must export default defineConfig({...}) or an object`);
  }
  return { file, config: config as ConfigInput };
}

/** Validates a merged settings object, naming the offending setting. */
export function validateSettings(settings: Settings): Settings {
  checkUrl('database-url (DATABASE_URL)', settings.databaseUrl, ['postgres:', 'postgresql:']);
  checkUrl('listen-database-url (LISTEN_DATABASE_URL)', settings.listenDatabaseUrl, [
    'postgres:',
    'postgresql:',
  ]);
  checkRedisUrl(settings.redisUrl);
  if (!SCHEMA_PATTERN.test(settings.schema)) {
    throw new ConfigError(
      `schema (PGQ_SCHEMA): invalid schema name ${JSON.stringify(settings.schema)}: use a letter or _ then up to 62 of A-Z a-z 0-9 _`,
    );
  }
  if (!PREFIX_PATTERN.test(settings.prefix)) {
    throw new ConfigError(
      `prefix (PGQ_PREFIX): invalid BullMQ prefix ${JSON.stringify(settings.prefix)}: use 1-64 of A-Z a-z 0-9 _ . : { } -`,
    );
  }
  if (!(LOG_LEVELS as readonly string[]).includes(settings.logLevel)) {
    throw new ConfigError(
      `log-level (LOG_LEVEL): expected one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(settings.logLevel)}`,
    );
  }
  if (settings.logFormat !== 'json' && settings.logFormat !== 'pretty') {
    throw new ConfigError(
      `log-format (LOG_FORMAT): expected json or pretty, got ${JSON.stringify(settings.logFormat)}`,
    );
  }
  return settings;
}

/**
 * Resolves the settings in SPEC.md's order of precedence: defaults < config file < environment <
 * flags, and validates them once. Throws {@link ConfigError} naming the bad setting.
 */
export async function resolveConfig(options: ResolveOptions = {}): Promise<ResolvedConfig> {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const envSettings = fromEnv(env);
  const flags = definedOnly(options.flags ?? {});
  const { file, config } = await loadConfigFile(flags.config ?? envSettings.config, cwd);
  const fileSettings = definedOnly({
    databaseUrl: config.databaseUrl,
    listenDatabaseUrl: config.listenDatabaseUrl,
    redisUrl: config.redisUrl,
    redisCluster: config.redisCluster,
    schema: config.schema,
    prefix: config.prefix,
    inlinePayloadLimit: config.inlinePayloadLimit,
    logLevel: config.logLevel,
    logFormat: config.logFormat,
  });
  const merged = { ...fileSettings, ...envSettings, ...flags };
  const databaseUrl = merged.databaseUrl ?? DEFAULTS.databaseUrl;
  const settings = validateSettings({
    databaseUrl,
    listenDatabaseUrl: merged.listenDatabaseUrl ?? databaseUrl,
    redisUrl: merged.redisUrl ?? DEFAULTS.redisUrl,
    schema: merged.schema ?? DEFAULTS.schema,
    prefix: merged.prefix ?? DEFAULTS.prefix,
    logLevel: (merged.logLevel ?? DEFAULTS.logLevel) as LogLevel,
    logFormat: (merged.logFormat ?? (options.isTTY ? 'pretty' : 'json')) as LogFormat,
  });
  const consumersDir =
    config.consumersDir && file ? resolve(file, '..', config.consumersDir) : config.consumersDir;
  const cluster = parseBoolean('redis-cluster (REDIS_CLUSTER)', merged.redisCluster);
  if (cluster) settings.redisCluster = true;
  settings.inlinePayloadLimit =
    merged.inlinePayloadLimit === undefined
      ? DEFAULT_INLINE_PAYLOAD_LIMIT
      : parseByteSize('inline-payload-limit (PGQ_INLINE_PAYLOAD_LIMIT)', merged.inlinePayloadLimit);
  return {
    ...settings,
    ...(config.consumers ? { consumers: config.consumers } : {}),
    ...(consumersDir ? { consumersDir } : {}),
    ...(file ? { configFile: file } : {}),
  };
}
