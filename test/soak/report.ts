/** Formats the soak's results: per-fault lines, a per-kind summary, and the verdict. */
import { FAULT_KINDS, type FaultKind } from './chaos.js';
import type { Recovery } from './monitor.js';
import type { Verdict } from './verify.js';
import type { VerifyLoopTotals } from './verify-loop.js';
import type { WriterTotals } from './writers.js';

/** Per fault kind: how often, and the longest recovery. */
export interface KindSummary {
  kind: FaultKind;
  injected: number;
  /** Longest time from a fault's end to the first new handling, in s. */
  maxFlowingAfterS: number | null;
  /**
   * Longest time from a fault's end until what was owed before it was handled or parked, in s,
   * over the faults that did not start while an earlier one was still draining.
   */
  maxDrainedAfterS: number | null;
  /** The same over every fault of the kind, overlapped ones included. */
  maxDrainedAnyS: number | null;
  /** Faults that started while an earlier one was still draining. */
  overlapped: number;
  /** Faults whose drain was not observed before the chaos ended (measured until the end). */
  notDrained: number;
}

function fmt(s: number | null | undefined): string {
  return s === undefined || s === null ? '-' : `${s.toFixed(1)} s`;
}

/** Groups recoveries by fault kind. */
export function summarizeKinds(recoveries: Recovery[]): KindSummary[] {
  return FAULT_KINDS.map((kind) => {
    const mine = recoveries.filter((r) => r.fault.kind === kind);
    const flowing = mine.flatMap((r) => (r.flowingAfterS === undefined ? [] : [r.flowingAfterS]));
    const drainedOf = (list: Recovery[]) =>
      list.flatMap((r) => (r.drainedAfterS === undefined ? [] : [r.drainedAfterS]));
    const drained = drainedOf(mine);
    const clean = drainedOf(mine.filter((r) => !r.overlapped));
    return {
      kind,
      injected: mine.length,
      maxFlowingAfterS: flowing.length ? Math.max(...flowing) : null,
      maxDrainedAfterS: clean.length ? Math.max(...clean) : null,
      maxDrainedAnyS: drained.length ? Math.max(...drained) : null,
      overlapped: mine.filter((r) => r.overlapped).length,
      notDrained: mine.length - drained.length,
    };
  });
}

/** The human report. */
export function formatReport(input: {
  minutes: number;
  elapsedS: number;
  writers: WriterTotals;
  recoveries: Recovery[];
  kinds: KindSummary[];
  verdict: Verdict;
  reconciles: string[];
  verifyLoop: VerifyLoopTotals;
  problems: string[];
}): string {
  const { writers, verdict: v } = input;
  const lines: string[] = [];
  lines.push('');
  lines.push(
    `== pgq-bridge soak: ${input.minutes} min of chaos, ${input.elapsedS.toFixed(0)} s in all ==`,
  );
  lines.push(
    `committed (stored) ${v.stored}; writers: acknowledged ${writers.acknowledged} ` +
      `(keyed ${writers.keyedAcknowledged}), uncertain ${writers.uncertain}, failed (not stored) ${writers.failed}`,
  );
  lines.push(
    'faults injected: ' +
      (input.kinds
        .filter((k) => k.injected > 0)
        .map((k) => `${k.kind} ${k.injected}`)
        .join(', ') || 'none'),
  );
  const loop = input.verifyLoop;
  lines.push(
    `reconcile --verify loop during the load: ${loop.runs} runs, ${loop.ok} ok, ${loop.failed} failed; ` +
      `sums ${JSON.stringify(loop.sums)}`,
  );
  lines.push(
    `owed (consumer, notification) pairs ${v.owedPairs}; handled pairs ${v.handledPairs}; ` +
      `handler runs ${v.handledRuns}; duplicates ${v.duplicates}`,
  );
  for (const [cause, n] of Object.entries(v.duplicatesByCause).sort((a, b) => b[1] - a[1])) {
    lines.push(`  duplicate cause: ${cause}: ${n}`);
  }
  lines.push(
    `transactional consumers: effects committed more than once ${v.transactionalDuplicates}`,
  );
  lines.push(
    `overlapping runs of one delivery ${v.pairOverlaps}; runs that outlived their timeout on purpose ` +
      `${v.slowRuns}; runs with an unknown end ${v.unknownEnds}`,
  );
  const o = v.ordered;
  lines.push(
    `ordered, per key: ${o.keys} keys, ${o.notifications} notifications; sequence broken ${o.sequenceBroken}, ` +
      `missing ${o.missing}, started before the previous one completed ${o.outOfOrder}, ` +
      `overlapping runs of a key ${o.overlaps} (runs with an unknown end ${o.unknownEnds})`,
  );
  lines.push(
    `rolling deploys: runs by code that does not list their channel ${v.foreignRuns}; ` +
      `rollout at the end: ${v.rolloutAtEnd}`,
  );
  lines.push(
    `lost ${v.lost}; acknowledged but missing ${v.acknowledgedMissing}; ` +
      `run again after completed in the ledger ${v.rerunAfterCompleted}`,
  );
  lines.push(
    `ledger: handled but not completed ${JSON.stringify(v.ledgerMissing)}; ` +
      `completed without handling ${v.ledgerWithoutHandling}; left failed ${v.ledgerFailed}`,
  );
  for (const r of input.reconciles) lines.push(`final ${r}`);
  lines.push('');
  lines.push(
    'faults (recovery = from the fault end: first new handling / everything owed before it handled):',
  );
  input.recoveries.forEach((r, i) => {
    const started = new Date(r.fault.startedAt).toISOString().slice(11, 19);
    lines.push(
      `  ${String(i + 1).padStart(3)} ${started} ${r.fault.kind.padEnd(18)} ` +
        `${((r.fault.endedAt - r.fault.startedAt) / 1000).toFixed(1).padStart(5)} s  ` +
        `flowing ${fmt(r.flowingAfterS).padStart(7)}  drained ${fmt(r.drainedAfterS).padStart(7)}` +
        (r.overlapped ? '*' : ' ') +
        (r.parkedAtDrain ? ` (${r.parkedAtDrain} parked for the final reconcile)` : '') +
        `  ${r.fault.detail}`,
    );
  });
  lines.push('');
  lines.push(
    '  (* = started while an earlier fault was still draining: the drain time covers both)',
  );
  lines.push('');
  lines.push(
    'per kind: injected, longest time to first new handling, longest time to drained ' +
      '(faults on their own; in brackets: all, with overlapped ones):',
  );
  for (const k of input.kinds) {
    lines.push(
      `  ${k.kind.padEnd(18)} ${String(k.injected).padStart(3)}  flowing ${fmt(k.maxFlowingAfterS).padStart(7)}  ` +
        `drained ${fmt(k.maxDrainedAfterS).padStart(7)} [${fmt(k.maxDrainedAnyS)}, ${k.overlapped} overlapped]` +
        (k.notDrained ? `  (${k.notDrained} not drained when the chaos ended)` : ''),
    );
  }
  lines.push('');
  const failures = [...v.failures, ...input.problems];
  if (failures.length === 0) {
    lines.push(
      'PASS: nothing lost, nothing completed ran again, the ledger agrees with the handlers, ' +
        'no overlapping runs, every key in commit order',
    );
  } else {
    lines.push('FAIL:');
    for (const f of failures) lines.push(`  - ${f}`);
    if (v.lostExamples.length) lines.push(`  lost, e.g. ${v.lostExamples.join(', ')}`);
    for (const e of v.rerunExamples) lines.push(`  rerun: ${e}`);
    for (const e of v.overlapExamples) lines.push(`  overlap: ${e}`);
    for (const e of v.ordered.examples) lines.push(`  ordered: ${e}`);
  }
  return lines.join('\n') + '\n';
}
