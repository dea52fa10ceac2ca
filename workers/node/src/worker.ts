// The block worker: polls one task queue through the generated FlowService client, runs
// registered block functions with a slot limit, heartbeats, delivers cancellation through an
// AbortSignal, and drains on shutdown. docs/workers.md is the protocol it implements.
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";

import { TaskQueueKind, type Payloads } from "./gen/tideflow/api/v1/common.js";
import { ApplicationError, toFailure } from "./errors.js";
import {
  FlowServiceClient,
  PollBlockTaskRequest,
  RecordBlockHeartbeatRequest,
  RespondBlockCanceledRequest,
  RespondBlockCompletedRequest,
  RespondBlockFailedRequest,
  type PollBlockTaskResponse,
} from "./gen/tideflow/api/v1/flow_service.js";
import { fromPayloads, toPayloads } from "./payloads.js";

const POLL_TIMEOUT_MS = 90_000; // the server answers an idle poll after 60 s
const RPC_TIMEOUT_MS = 10_000;
const RESPOND_FOR_MS = 60_000; // how long an answer keeps retrying while the server is away
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 5_000;
const RETRYABLE = new Set([status.UNAVAILABLE, status.DEADLINE_EXCEEDED, status.RESOURCE_EXHAUSTED]);
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/** What a running block knows about its attempt. */
export interface BlockInfo {
  runId: string;
  executionId: string;
  blockId: string;
  blockType: string;
  /** 1 for the first attempt. */
  attempt: number;
  /** The last heartbeat's details of a previous attempt (null when none), to resume from. */
  heartbeatDetails: unknown;
  /** The block's heartbeat timeout in ms; 0 when it has none. */
  heartbeatTimeoutMs: number;
}

/** Handed to a block function with its input. */
export interface BlockContext {
  info: BlockInfo;
  /** Record progress: sent at most once per heartbeat interval, the latest details win. */
  heartbeat(details?: unknown): void;
  /** Aborted when the server asks the block to cancel (reason: CancelRequested), or when the
   * worker's drain timeout passes during a shutdown (reason: DrainTimeout). */
  signal: AbortSignal;
}

export type BlockFunction = (input: unknown, ctx: BlockContext) => Promise<unknown> | unknown;

export interface WorkerOptions {
  /** Frontend host:port. */
  address: string;
  taskQueue: string;
  namespace?: string;
  /** Default host:pid. */
  identity?: string;
  /** Blocks running at once (10); a poll is only outstanding while a slot is free. */
  maxConcurrent?: number;
  /** Outstanding polls at most (min(maxConcurrent, 4)). */
  pollers?: number;
  /** The most often a block's heartbeats are sent (1000 ms, or 0.8 x its heartbeat timeout). */
  heartbeatIntervalMs?: number;
  /** How long a shutdown waits for running blocks before aborting them (30 s). */
  drainTimeoutMs?: number;
  /** Turn off the worker's own sticky queue. By default it names one (its identity and a
   * random suffix), polls it too and names it on its polls and completions, so blocks with
   * `affinity: run` and the `affinity_key`s it owns come to it first. */
  noSticky?: boolean;
  /** Affinity keys whose state this worker holds warm (at most 100), sent on every normal poll. */
  warmKeys?: string[];
  /** An API key of the namespace with the worker role, sent as `authorization: Bearer`. */
  apiKey?: string;
  /** Connect with TLS: the CA to trust (PEM; the system's roots when omitted), and for mutual
   * TLS a client certificate and its key. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  log?: (line: string) => void;
}

/** The reason of a block's AbortSignal when the server asked it to cancel. */
export class CancelRequested extends Error {
  override name = "CancelRequested";
}

/** The reason of a block's AbortSignal when a shutdown's drain timeout passed. */
export class DrainTimeout extends Error {
  override name = "DrainTimeout";
}

type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: { deadline: Date },
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

function call<Req, Res>(
  metadata: Metadata,
  method: Unary<Req, Res>,
  request: Req,
  timeoutMs: number,
  abort?: AbortSignal,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const pending = method(request, metadata, { deadline: new Date(Date.now() + timeoutMs) }, (error, response) =>
      error ? reject(error) : resolve(response),
    ) as { cancel(): void };
    abort?.addEventListener("abort", () => pending.cancel(), { once: true });
  });
}

function backoff(previousMs: number): number {
  const doubled = Math.min(Math.max(previousMs * 2, BACKOFF_FIRST_MS), BACKOFF_MAX_MS);
  return doubled * (0.8 + 0.4 * Math.random());
}

function sleep(ms: number, abort?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    abort?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/** A queue name unique to this process: the identity, as far as a queue name may spell it,
 * and a random suffix. */
function stickyQueueName(identity: string): string {
  const readable = identity.replace(/[^A-Za-z0-9._:/-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 200) || "worker";
  return `${readable}-${randomBytes(16).toString("hex")}`;
}

function durationMs(value: { seconds: string; nanos: number } | undefined): number {
  return value ? Number(value.seconds) * 1000 + value.nanos / 1e6 : 0;
}

/** Sends one attempt's heartbeats: at most one call per interval, always the latest details. */
class Heartbeater {
  private details: unknown = null;
  private dirty = false;
  private lastSent = 0;
  private timer: NodeJS.Timeout | undefined;
  private sending = false;
  private closed = false;
  hasDetails = false;

  constructor(
    private readonly intervalMs: number,
    private readonly send: (details: unknown) => Promise<boolean>,
    private readonly onCancel: () => void,
  ) {}

  get latest(): unknown {
    return this.details;
  }

  record(details: unknown): void {
    this.details = details;
    this.dirty = true;
    this.hasDetails = true;
    this.schedule();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }

  private schedule(): void {
    if (this.closed || this.sending || this.timer !== undefined || !this.dirty) return;
    const wait = Math.max(0, this.lastSent + this.intervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, wait);
  }

  private async flush(): Promise<void> {
    if (this.closed || !this.dirty) return;
    this.dirty = false;
    this.sending = true;
    this.lastSent = Date.now();
    try {
      if (await this.send(this.details)) this.onCancel();
    } finally {
      this.sending = false;
      this.schedule();
    }
  }
}

/** A Tideflow block worker for one task queue. */
export class Worker {
  readonly namespace: string;
  readonly taskQueue: string;
  readonly identity: string;
  /** The worker's own sticky queue ("" with noSticky). */
  readonly stickyTaskQueue: string;
  private readonly warmKeys: string[];
  private readonly client: FlowServiceClient;
  private readonly apiKey: string;
  private readonly blocks = new Map<string, BlockFunction>();
  private readonly maxConcurrent: number;
  private readonly pollers: number;
  private readonly heartbeatIntervalMs: number;
  private readonly drainTimeoutMs: number;
  private readonly log: (line: string) => void;
  private readonly stopPolling = new AbortController();
  private readonly abortBlocks = new AbortController();
  private readonly running = new Set<Promise<void>>();
  private freeSlots: number;
  private slotWaiters: Array<() => void> = [];

  constructor(options: WorkerOptions) {
    this.namespace = options.namespace ?? "default";
    this.taskQueue = options.taskQueue;
    this.identity = options.identity || `${hostname()}:${process.pid}`;
    this.maxConcurrent = options.maxConcurrent ?? 10;
    this.pollers = options.pollers ?? Math.min(this.maxConcurrent, 4);
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 1000;
    this.drainTimeoutMs = options.drainTimeoutMs ?? 30_000;
    this.log = options.log ?? ((line) => console.error(line));
    this.freeSlots = this.maxConcurrent;
    this.stickyTaskQueue = options.noSticky ? "" : stickyQueueName(this.identity);
    this.warmKeys = options.warmKeys ?? [];
    this.apiKey = options.apiKey ?? "";
    const channel = options.tls
      ? credentials.createSsl(options.tls.ca ?? null, options.tls.key ?? null, options.tls.cert ?? null)
      : credentials.createInsecure();
    this.client = new FlowServiceClient(options.address, channel, {
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    });
  }

  /** Metadata of one call: the API key, when there is one, and for an answer the attempt's
   * trace context (W3C traceparent), so the run's trace goes on through the worker. */
  private metadata(task?: PollBlockTaskResponse): Metadata {
    const metadata = new Metadata();
    if (this.apiKey) metadata.set("authorization", `Bearer ${this.apiKey}`);
    for (const [key, value] of Object.entries(task?.traceContext ?? {})) metadata.set(key, value);
    return metadata;
  }

  /** Serve `blockType` ("name@version") with `fn`. Call it before run(). */
  register(blockType: string, fn: BlockFunction): this {
    this.blocks.set(blockType, fn);
    return this;
  }

  /** Poll and run blocks until shutdown(); resolves once the drain is over. */
  async run(): Promise<void> {
    this.log(`worker ${this.identity} polling ${this.namespace}/${this.taskQueue} for ${[...this.blocks.keys()].join(", ")}`);
    const normal = PollBlockTaskRequest.fromPartial({
      namespace: this.namespace,
      taskQueue: { name: this.taskQueue },
      identity: this.identity,
      stickyTaskQueue: this.stickyTaskQueue,
      warmKeys: this.warmKeys,
    });
    const loops = Array.from({ length: this.pollers }, () => this.pollLoop(normal));
    if (this.stickyTaskQueue) {
      // Half as many again on the sticky queue (at least one), each holding a free slot too.
      const sticky = PollBlockTaskRequest.fromPartial({
        namespace: this.namespace,
        taskQueue: { name: this.stickyTaskQueue, kind: TaskQueueKind.TASK_QUEUE_KIND_STICKY },
        identity: this.identity,
      });
      loops.push(...Array.from({ length: Math.ceil(this.pollers / 2) }, () => this.pollLoop(sticky)));
    }
    await Promise.all(loops);
    this.log(`draining ${this.running.size} running blocks (up to ${this.drainTimeoutMs} ms)`);
    const drained = Promise.all([...this.running]);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), this.drainTimeoutMs);
    });
    if ((await Promise.race([drained, timedOut])) === "timeout") {
      this.abortBlocks.abort(new DrainTimeout("worker shut down and the drain timeout passed"));
      await drained;
    }
    clearTimeout(timer);
    this.client.close();
    this.log(`worker ${this.identity} stopped`);
  }

  /** Stop polling; run() then lets running blocks finish and resolves. */
  shutdown(): void {
    this.stopPolling.abort();
  }

  private async takeSlot(): Promise<boolean> {
    while (this.freeSlots === 0) {
      if (this.stopPolling.signal.aborted) return false;
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
    if (this.stopPolling.signal.aborted) return false;
    this.freeSlots -= 1;
    return true;
  }

  private releaseSlot(): void {
    this.freeSlots += 1;
    this.slotWaiters.shift()?.();
  }

  private async pollLoop(request: PollBlockTaskRequest): Promise<void> {
    const stop = this.stopPolling.signal;
    stop.addEventListener("abort", () => {
      for (const wake of this.slotWaiters.splice(0)) wake();
    }, { once: true });
    let delay = 0;
    while (!stop.aborted) {
      if (!(await this.takeSlot())) return;
      let task: PollBlockTaskResponse;
      try {
        task = await call(
          this.metadata(),
          this.client.pollBlockTask.bind(this.client) as Unary<PollBlockTaskRequest, PollBlockTaskResponse>,
          request,
          POLL_TIMEOUT_MS,
          stop,
        );
      } catch (e) {
        this.releaseSlot();
        if (stop.aborted) return;
        const code = (e as ServiceError).code;
        if (code !== status.DEADLINE_EXCEEDED) {
          delay = backoff(delay);
          this.log(`poll failed (${status[code] ?? code}); again in ${Math.round(delay)} ms`);
          await sleep(delay, stop);
        }
        continue;
      }
      delay = 0;
      if (task.taskToken.length === 0) {
        this.releaseSlot();
        continue;
      }
      const attempt = this.execute(task).finally(() => {
        this.running.delete(attempt);
        this.releaseSlot();
      });
      this.running.add(attempt);
    }
  }

  private async execute(task: PollBlockTaskResponse): Promise<void> {
    const fn = this.blocks.get(task.blockType);
    if (fn === undefined) {
      const error = new ApplicationError("UnknownBlockType", `no block type ${JSON.stringify(task.blockType)} on worker ${this.identity}`, { nonRetryable: true });
      await this.fail(task, error, undefined);
      return;
    }
    let input: unknown;
    let heartbeatDetails: unknown = null;
    try {
      input = fromPayloads(task.input);
      heartbeatDetails = fromPayloads(task.heartbeatDetails);
    } catch (e) {
      await this.fail(task, new ApplicationError("BadInput", (e as Error).message, { nonRetryable: true }), undefined);
      return;
    }
    const heartbeatTimeoutMs = durationMs(task.timeouts?.heartbeat);
    const interval = heartbeatTimeoutMs > 0 ? Math.min(this.heartbeatIntervalMs, 0.8 * heartbeatTimeoutMs) : this.heartbeatIntervalMs;
    const cancel = new AbortController();
    const onDrainTimeout = () => cancel.abort(this.abortBlocks.signal.reason);
    this.abortBlocks.signal.addEventListener("abort", onDrainTimeout, { once: true });
    let cancelRequested = false;
    const heartbeater = new Heartbeater(interval, (details) => this.heartbeat(task, details), () => {
      cancelRequested = true;
      cancel.abort(new CancelRequested("the server asked the block to cancel"));
    });
    const ctx: BlockContext = {
      info: {
        runId: task.run?.runId ?? "",
        executionId: task.run?.executionId ?? "",
        blockId: task.blockId,
        blockType: task.blockType,
        attempt: task.attempt,
        heartbeatDetails,
        heartbeatTimeoutMs,
      },
      heartbeat: (details?: unknown) => heartbeater.record(details ?? null),
      signal: cancel.signal,
    };
    let outcome: { ok: true; value: unknown } | { ok: false; error: unknown };
    try {
      outcome = { ok: true, value: await fn(input, ctx) };
    } catch (e) {
      outcome = { ok: false, error: e };
    } finally {
      heartbeater.close();
      this.abortBlocks.signal.removeEventListener("abort", onDrainTimeout);
    }
    const last = heartbeater.hasDetails ? heartbeater.latest : undefined;
    if (cancelRequested) {
      await this.canceled(task, last);
    } else if (outcome.ok) {
      await this.complete(task, outcome.value);
    } else {
      await this.fail(task, outcome.error, last);
    }
  }

  private async heartbeat(task: PollBlockTaskResponse, details: unknown): Promise<boolean> {
    try {
      const reply = await call(
        this.metadata(task),
        this.client.recordBlockHeartbeat.bind(this.client) as Unary<RecordBlockHeartbeatRequest, { cancelRequested: boolean }>,
        RecordBlockHeartbeatRequest.fromPartial({
          namespace: this.namespace,
          taskToken: task.taskToken,
          details: toPayloads(details),
          identity: this.identity,
        }),
        RPC_TIMEOUT_MS,
      );
      return reply.cancelRequested;
    } catch {
      // NOT_FOUND: the attempt is over (timed out, the run closed); its answer will be dropped.
      return false;
    }
  }

  private async complete(task: PollBlockTaskResponse, value: unknown): Promise<void> {
    let result: Payloads;
    try {
      result = toPayloads(value);
    } catch (e) {
      await this.fail(task, new ApplicationError("ResultNotJSON", (e as Error).message, { nonRetryable: true }), undefined);
      return;
    }
    const error = await this.respond("completion", task, () =>
      call(
        this.metadata(task),
        this.client.respondBlockCompleted.bind(this.client) as Unary<RespondBlockCompletedRequest, unknown>,
        RespondBlockCompletedRequest.fromPartial({
          namespace: this.namespace,
          taskToken: task.taskToken,
          result,
          identity: this.identity,
          stickyTaskQueue: this.stickyTaskQueue,
        }),
        RPC_TIMEOUT_MS,
      ),
    );
    if (error?.code === status.INVALID_ARGUMENT) {
      // The server refused the result (too big for its step); the block stays open, so fail
      // it with the reason rather than leave it to its timeout.
      await this.fail(task, new ApplicationError("ResultRejected", error.details, { nonRetryable: true }), undefined);
    }
  }

  private async fail(task: PollBlockTaskResponse, thrown: unknown, lastDetails: unknown): Promise<void> {
    await this.respond("failure", task, () =>
      call(
        this.metadata(task),
        this.client.respondBlockFailed.bind(this.client) as Unary<RespondBlockFailedRequest, unknown>,
        RespondBlockFailedRequest.fromPartial({
          namespace: this.namespace,
          taskToken: task.taskToken,
          failure: toFailure(thrown),
          lastHeartbeatDetails: lastDetails === undefined ? undefined : toPayloads(lastDetails),
          identity: this.identity,
        }),
        RPC_TIMEOUT_MS,
      ),
    );
  }

  private async canceled(task: PollBlockTaskResponse, lastDetails: unknown): Promise<void> {
    await this.respond("cancellation", task, () =>
      call(
        this.metadata(task),
        this.client.respondBlockCanceled.bind(this.client) as Unary<RespondBlockCanceledRequest, unknown>,
        RespondBlockCanceledRequest.fromPartial({
          namespace: this.namespace,
          taskToken: task.taskToken,
          details: lastDetails === undefined ? undefined : toPayloads(lastDetails),
          identity: this.identity,
        }),
        RPC_TIMEOUT_MS,
      ),
    );
  }

  /** One answer, retried on UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED for up to a
   * minute; NOT_FOUND (the attempt is no longer current) is dropped. The last error, or
   * undefined when answered or dropped. */
  private async respond(what: string, task: PollBlockTaskResponse, send: () => Promise<unknown>): Promise<ServiceError | undefined> {
    const deadline = Date.now() + RESPOND_FOR_MS;
    let delay = 0;
    for (;;) {
      try {
        await send();
        return undefined;
      } catch (e) {
        const error = e as ServiceError;
        if (error.code === status.NOT_FOUND) {
          this.log(`${what} for block ${task.blockId} of run ${task.run?.runId} dropped: attempt no longer current`);
          return undefined;
        }
        if (!RETRYABLE.has(error.code) || Date.now() > deadline) {
          this.log(`${what} for block ${task.blockId} of run ${task.run?.runId} failed: ${error.message}`);
          return error;
        }
        delay = backoff(delay);
        await sleep(delay);
      }
    }
  }
}
