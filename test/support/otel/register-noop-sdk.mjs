// `node --import ./test/support/otel/register-noop-sdk.mjs ...`: a real SDK (sdk-trace-node,
// sampling every span) whose spans go nowhere: what recording spans costs, without an
// exporter's I/O. Used by bench/tracing.ts.
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';

new NodeTracerProvider().register();
