import { ConfigError } from './errors.js';
import { redactSecrets } from './log.js';

const BYTE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
};

/**
 * Parses a byte size: a whole number of bytes, or one with a binary unit (`64KiB`, `64k`,
 * `1MB` = 1 MiB: sizes of payloads are thought of in powers of two). Throws {@link ConfigError}.
 */
export function parseByteSize(setting: string, value: number | string): number {
  const match = typeof value === 'number' ? null : /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(value);
  const unit = match ? BYTE_UNITS[match[2].toLowerCase()] : undefined;
  const bytes = typeof value === 'number' ? value : match && unit ? Number(match[1]) * unit : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new ConfigError(
      `${setting}: expected a size in bytes (e.g. 65536, 64KiB, 1MiB), got ${JSON.stringify(value)}`,
    );
  }
  return bytes;
}

export function checkUrl(setting: string, value: string, protocols: string[]): void {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${setting}: not a valid URL: ${redactSecrets(value)}`);
  }
  if (!protocols.includes(url.protocol)) {
    throw new ConfigError(
      `${setting}: expected a ${protocols.join(' or ')}// URL, got ${redactSecrets(value)}`,
    );
  }
}

export function checkRedisUrl(value: string): void {
  // Several comma-separated nodes are allowed (Redis Cluster); each must be a redis URL.
  for (const part of value.split(',')) {
    checkUrl('redis-url (REDIS_URL)', part.trim(), ['redis:', 'rediss:']);
  }
}

export function parseBoolean(setting: string, value: boolean | string | undefined): boolean {
  if (value === undefined || typeof value === 'boolean') return value === true;
  if (/^(1|true|yes|on)$/i.test(value)) return true;
  if (/^(0|false|no|off)$/i.test(value)) return false;
  throw new ConfigError(`${setting}: expected true or false, got ${JSON.stringify(value)}`);
}
