// The worker against a fake FlowService on a real loopback gRPC server.
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Server, ServerCredentials, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";

import { FlowServiceService, PollBlockTaskResponse } from "../gen/tideflow/api/v1/flow_service.js";
import { CancelRequested, fromPayloads, toPayloads, Worker } from "../index.js";

interface Answer {
  kind: "completed" | "failed" | "canceled";
  request: Record<string, unknown>;
  traceparent: unknown[];
}

class FakeFrontend {
  readonly answers: Answer[] = [];
  private waiters: Array<() => void> = [];
  heartbeats = 0;
  cancelAfter = 0;
  readonly polls: Array<Record<string, unknown>> = [];
  private readonly server = new Server();

  constructor(private readonly tasks: PollBlockTaskResponse[]) {}

  async start(): Promise<string> {
    type Call = ServerUnaryCall<Record<string, unknown>, unknown>;
    const answer = (kind: Answer["kind"]) => (call: Call, done: sendUnaryData<unknown>) => {
      this.answers.push({ kind, request: call.request, traceparent: call.metadata.get("traceparent") });
      for (const wake of this.waiters.splice(0)) wake();
      done(null, {});
    };
    const unimplemented = Object.fromEntries(Object.keys(FlowServiceService).map((name) => [name, (_: Call, done: sendUnaryData<unknown>) => done({ code: 12, details: "fake" }, null)]));
    this.server.addService(FlowServiceService, {
      ...unimplemented,
      pollBlockTask: (call: Call, done: sendUnaryData<unknown>) => {
        this.polls.push(call.request);
        const task = this.tasks.shift();
        if (task) return done(null, task);
        const idle = setTimeout(() => done(null, PollBlockTaskResponse.fromPartial({})), 200);
        call.on("cancelled", () => clearTimeout(idle));
      },
      respondBlockCompleted: answer("completed"),
      respondBlockFailed: answer("failed"),
      respondBlockCanceled: answer("canceled"),
      recordBlockHeartbeat: (_: Call, done: sendUnaryData<unknown>) => {
        this.heartbeats += 1;
        done(null, { cancelRequested: this.cancelAfter > 0 && this.heartbeats >= this.cancelAfter });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    return `127.0.0.1:${port}`;
  }

  async answered(count: number): Promise<Answer[]> {
    while (this.answers.length < count) await new Promise<void>((resolve) => this.waiters.push(resolve));
    return this.answers;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}

function task(blockType: string, input: unknown): PollBlockTaskResponse {
  return PollBlockTaskResponse.fromPartial({
    taskToken: Buffer.from(`token-${blockType}`),
    blockId: "b",
    blockType,
    input: toPayloads(input),
    attempt: 1,
    run: { runId: "r1", executionId: "e1" },
  });
}

async function withWorker(fake: FakeFrontend, setup: (w: Worker) => void, body: (w: Worker) => Promise<void>, options = {}): Promise<void> {
  const address = await fake.start();
  const worker = new Worker({ address, taskQueue: "q", log: () => {}, ...options });
  setup(worker);
  const running = worker.run();
  try {
    await body(worker);
  } finally {
    worker.shutdown();
    await running;
    fake.stop();
  }
}

test("a task runs and is completed with its result and token", async () => {
  const fake = new FakeFrontend([task("double@1", { n: 21 })]);
  await withWorker(fake, (w) => w.register("double@1", (input) => ({ n: (input as { n: number }).n * 2 })), async () => {
    const [answer] = await fake.answered(1);
    assert.equal(answer?.kind, "completed");
    assert.deepEqual(fromPayloads(answer?.request["result"] as never), { n: 42 });
    assert.equal((answer?.request["taskToken"] as Buffer).toString(), "token-double@1");
  });
});

test("an answer carries the attempt's trace context as its metadata", async () => {
  const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const traced = { ...task("echo@1", 1), traceContext: { traceparent: parent } };
  const fake = new FakeFrontend([traced]);
  await withWorker(fake, (w) => w.register("echo@1", (input) => input), async () => {
    const [answer] = await fake.answered(1);
    assert.deepEqual(answer?.traceparent, [parent]);
  });
});

test("an unknown block type fails non-retryable", async () => {
  const fake = new FakeFrontend([task("nope@1", null)]);
  await withWorker(fake, () => {}, async () => {
    const [answer] = await fake.answered(1);
    assert.equal(answer?.kind, "failed");
    const failure = answer?.request["failure"] as { applicationFailureInfo: { type: string; nonRetryable: boolean } };
    assert.equal(failure.applicationFailureInfo.type, "UnknownBlockType");
    assert.equal(failure.applicationFailureInfo.nonRetryable, true);
  });
});

test("a heartbeat reply asking to cancel aborts the block, answered canceled with its details", async () => {
  const fake = new FakeFrontend([task("wait@1", null)]);
  fake.cancelAfter = 2;
  let reason: unknown;
  await withWorker(
    fake,
    (w) =>
      w.register("wait@1", async (_input, ctx) => {
        for (let beats = 1; ; beats++) {
          ctx.heartbeat(beats);
          try {
            await sleep(5, undefined, { signal: ctx.signal });
          } catch (e) {
            reason = ctx.signal.reason;
            throw e;
          }
        }
      }),
    async () => {
      const [answer] = await fake.answered(1);
      assert.equal(answer?.kind, "canceled");
      assert.ok((fromPayloads(answer?.request["details"] as never) as number) >= 2);
      assert.ok(reason instanceof CancelRequested);
    },
    { heartbeatIntervalMs: 10 },
  );
});

test("shutdown lets a running block finish before run() resolves", async () => {
  const fake = new FakeFrontend([task("slow@1", null)]);
  let started: () => void = () => {};
  const running = new Promise<void>((resolve) => (started = resolve));
  await withWorker(
    fake,
    (w) =>
      w.register("slow@1", async () => {
        started();
        await sleep(200);
        return "done";
      }),
    async (w) => {
      await running;
      w.shutdown();
    },
  );
  assert.equal(fake.answers.length, 1, "answered before run() resolved");
  assert.equal(fake.answers[0]?.kind, "completed");
  assert.equal(fromPayloads(fake.answers[0]?.request["result"] as never), "done");
});

test("the slot limit bounds the blocks running at once", async () => {
  const fake = new FakeFrontend(Array.from({ length: 6 }, (_, i) => task("count@1", i)));
  let running = 0;
  let most = 0;
  await withWorker(
    fake,
    (w) =>
      w.register("count@1", async () => {
        running += 1;
        most = Math.max(most, running);
        await sleep(20);
        running -= 1;
        return null;
      }),
    async () => {
      await fake.answered(6);
    },
    { maxConcurrent: 2, pollers: 2 },
  );
  assert.ok(most <= 2, `${most} blocks ran at once with 2 slots`);
});

test("the worker polls its own sticky queue and names it on its polls and completions", async () => {
  const fake = new FakeFrontend([task("echo@1", 1)]);
  await withWorker(
    fake,
    (w) => w.register("echo@1", (input) => input),
    async (w) => {
      const [answer] = await fake.answered(1);
      assert.match(w.stickyTaskQueue, /^host-42-[0-9a-f]{32}$/);
      assert.equal(answer?.request["stickyTaskQueue"], w.stickyTaskQueue);
      const queue = (poll: Record<string, unknown>) => poll["taskQueue"] as { name: string; kind: number };
      assert.ok(fake.polls.some((p) => queue(p).name === "q" && p["stickyTaskQueue"] === w.stickyTaskQueue && (p["warmKeys"] as string[])[0] === "digits"));
      assert.ok(fake.polls.some((p) => queue(p).name === w.stickyTaskQueue && queue(p).kind === 2));
    },
    { identity: "host 42", warmKeys: ["digits"] },
  );
});
