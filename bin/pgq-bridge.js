#!/usr/bin/env node
import { main } from '../dist/cli/index.js';

main(process.argv).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`pgq-bridge: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  },
);
