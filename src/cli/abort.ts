import type { Logger } from '../log.js';

/**
 * For finite commands (reconcile, cleanup): the first SIGINT/SIGTERM aborts the returned signal,
 * so the command stops between two batches and reports what it did; a second one exits at once.
 * Call `dispose()` when the command is done.
 */
export function abortOnSignal(
  log: Logger,
  what: string,
): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => {
    if (controller.signal.aborted) {
      log.warn({ signal }, 'second signal: exiting at once');
      process.exit(130);
    }
    log.warn({ signal }, `stopping ${what} after the current batch`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
