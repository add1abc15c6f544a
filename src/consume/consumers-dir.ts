import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { UsageError } from '../errors.js';
import { importUserFile } from './load-module.js';
import type { ConsumerDefinition } from './consumers.js';
import { validateConsumers } from './consumer-validation.js';

const CONSUMER_FILE = /\.(m?ts|m?js)$/;

/**
 * Loads every consumer file of a directory (`.ts`, `.mts`, `.js`, `.mjs`; not `.d.ts`): each file's
 * default export is a consumer definition or an array of them.
 */
export async function loadConsumersDir(dir: string): Promise<ConsumerDefinition[]> {
  const absolute = resolve(dir);
  let names: string[];
  try {
    if (!statSync(absolute).isDirectory()) throw new Error('not a directory');
    names = readdirSync(absolute);
  } catch (error) {
    throw new UsageError(`consumers-dir: cannot read ${absolute}: ${(error as Error).message}`);
  }
  const files = names.filter((n) => CONSUMER_FILE.test(n) && !/\.d\.m?ts$/.test(n)).sort();
  const entries: { value: unknown; where: string }[] = [];
  for (const name of files) {
    const path = join(absolute, name);
    let mod: Record<string, unknown>;
    try {
      mod = await importUserFile(path);
    } catch (error) {
      throw new UsageError(
        `consumers-dir: ${path} failed to load: ${error instanceof Error ? error.message : String(error)}`,
        'PGQ_CONSUMER_LOAD',
      );
    }
    if (mod.default === undefined) {
      throw new UsageError(
        `consumers-dir: ${path} has no default export (export default defineConsumer({...}))`,
        'PGQ_INVALID_CONSUMER',
      );
    }
    const values = Array.isArray(mod.default) ? mod.default : [mod.default];
    for (const value of values) entries.push({ value, where: path });
  }
  return validateConsumers(entries);
}

/** Applies `--consumers` / `--exclude-consumers`; unknown ids are a usage error. */
export function selectConsumers(
  all: ConsumerDefinition[],
  include?: string[],
  exclude?: string[],
): ConsumerDefinition[] {
  const known = new Set(all.map((c) => c.id));
  for (const id of [...(include ?? []), ...(exclude ?? [])]) {
    if (!known.has(id)) {
      throw new UsageError(
        `unknown consumer ${JSON.stringify(id)}; known: ${[...known].join(', ') || '(none)'}`,
      );
    }
  }
  return all.filter(
    (c) => (!include || include.includes(c.id)) && !(exclude && exclude.includes(c.id)),
  );
}
