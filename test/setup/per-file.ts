// Runs in every test file (vitest setupFiles): no CLI process outlives the file that started it.
import { afterAll } from 'vitest';
import { killAll } from '../support/cli.js';

afterAll(async () => {
  await killAll();
});
