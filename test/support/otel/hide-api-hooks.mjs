// Module hooks of hide-api.mjs (they run on the loader thread).
import { appendFileSync } from 'node:fs';

let log = '';

export function initialize(data) {
  log = data?.log ?? '';
}

export async function resolve(specifier, context, next) {
  if (specifier === '@opentelemetry/api' || specifier.startsWith('@opentelemetry/api/')) {
    if (log) appendFileSync(log, `${process.pid} ${specifier}\n`);
    const error = new Error(`Cannot find package '${specifier}' (hidden by hide-api.mjs)`);
    error.code = 'ERR_MODULE_NOT_FOUND';
    throw error;
  }
  return next(specifier, context);
}
