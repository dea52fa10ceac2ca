// The TypeScript example worker: the demo block (node.slugify@1) or the worker conformance
// blocks (conf.*, docs/workers.md) on one task queue, until SIGTERM or SIGINT, then it drains
// and exits 0.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";

import { ApplicationError, Worker, type BlockContext } from "./index.js";

const { values: flags } = parseArgs({
  options: {
    address: { type: "string", default: "127.0.0.1:7233" },
    namespace: { type: "string", default: "default" },
    "task-queue": { type: "string", default: "node" },
    identity: { type: "string", default: "" },
    "max-concurrent": { type: "string", default: "10" },
    blocks: { type: "string", default: "demo" },
    "drain-timeout-s": { type: "string", default: "30" },
    "api-key": { type: "string", default: process.env["TIDEFLOW_API_KEY"] ?? "" },
    "tls-ca": { type: "string", default: "" },
    "tls-cert": { type: "string", default: "" },
    "tls-key": { type: "string", default: "" },
  },
});

function pem(path: string): Buffer | undefined {
  return path ? readFileSync(path) : undefined;
}
const tls = flags["tls-ca"] || flags["tls-cert"]
  ? { ca: pem(flags["tls-ca"]), cert: pem(flags["tls-cert"]), key: pem(flags["tls-key"]) }
  : undefined;

type Input = Record<string, unknown>;

function slugify(input: unknown): unknown {
  const title = String((input as Input | null)?.["title"] ?? "");
  const slug = title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
  return { slug, worker: "node" };
}

function untilAborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}

const conformance: Record<string, (input: unknown, ctx: BlockContext) => Promise<unknown>> = {
  "conf.echo@1": async (input) => input,
  "conf.flaky@1": async (input, ctx) => {
    if (ctx.info.attempt <= Number((input as Input)["fail_attempts"] ?? 0)) {
      throw new ApplicationError("Flaky", `attempt ${ctx.info.attempt} failed`);
    }
    return { attempt: ctx.info.attempt };
  },
  "conf.fatal@1": async (input) => {
    const reason = String((input as Input)["reason"] ?? "");
    throw new ApplicationError("Fatal", `fatal: ${reason}`, { nonRetryable: true, details: [input] });
  },
  "conf.wait_cancel@1": async (_input, ctx) => {
    for (let beats = 1; ; beats++) {
      ctx.heartbeat({ beats });
      await sleep(100, undefined, { signal: ctx.signal });
    }
  },
  "conf.stall@1": async (_input, ctx) => {
    if (ctx.info.attempt >= 2) return { attempt: ctx.info.attempt, resumed: ctx.info.heartbeatDetails };
    ctx.heartbeat({ progress: 1 });
    return untilAborted(ctx.signal);
  },
  "conf.big@1": async (input) => ({ blob: "x".repeat(Number((input as Input)["size"])) }),
  "conf.slow@1": async (input, ctx) => {
    const ms = Number((input as Input)["ms"]);
    ctx.heartbeat({ running: true }); // running here, not just recorded as started
    await sleep(ms);
    return { slept_ms: ms };
  },
};

const sets: Record<string, Record<string, (input: unknown, ctx: BlockContext) => unknown>> = {
  demo: { "node.slugify@1": slugify },
  conformance,
};

const blocks = sets[flags.blocks];
if (blocks === undefined) {
  console.error(`--blocks ${flags.blocks}: want demo or conformance`);
  process.exit(2);
}
const worker = new Worker({
  address: flags.address,
  namespace: flags.namespace,
  taskQueue: flags["task-queue"],
  identity: flags.identity,
  maxConcurrent: Number(flags["max-concurrent"]),
  drainTimeoutMs: Number(flags["drain-timeout-s"]) * 1000,
  apiKey: flags["api-key"],
  tls,
});
for (const [type, fn] of Object.entries(blocks)) worker.register(type, fn);
for (const signal of ["SIGTERM", "SIGINT"] as const) process.once(signal, () => worker.shutdown());
await worker.run();
