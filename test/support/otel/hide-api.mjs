// `node --import ./test/support/otel/hide-api.mjs ...`: runs a process as if @opentelemetry/api
// were not installed (resolving it fails like a missing package), and appends one line to
// $PGQ_TEST_HIDE_LOG each time something tries to load it.
import { register } from 'node:module';

register('./hide-api-hooks.mjs', import.meta.url, {
  data: { log: process.env.PGQ_TEST_HIDE_LOG ?? '' },
});
