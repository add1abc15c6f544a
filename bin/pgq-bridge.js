#!/usr/bin/env node
import { setFlagsFromString } from 'node:v8';

// `listen` allocates many short-lived objects (rows, job data, Redis commands) around a live heap
// of about 20 MB; by default V8 grows the young generation while modules load and lets the old
// one reach several times the live set, so RSS passed 150 MB at 5,000 rows/s. Keeping the young
// generation at its initial size and collecting at 2x the live set held it under 100 MB for a
// few percent more GC time. Neither caps the heap: a batch of large payloads still fits. Set
// before the CLI's modules load (they grow the young generation); docs/performance.md, "Memory".
if (process.argv.slice(2).includes('listen')) {
  setFlagsFromString('--semi-space-growth-factor=1');
  setFlagsFromString('--heap-growing-percent=100');
}

const { main } = await import('../dist/cli/index.js');

main(process.argv).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`pgq-bridge: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  },
);
