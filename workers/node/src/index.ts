// Tideflow block workers for Node.js/TypeScript, over stubs generated from proto/.
export { ApplicationError, toFailure, FAILURE_SOURCE } from "./errors.js";
export type { ApplicationErrorOptions } from "./errors.js";
export { fromPayload, fromPayloads, toPayload, toPayloads, PayloadError } from "./payloads.js";
export { CancelRequested, DrainTimeout, Worker } from "./worker.js";
export type { BlockContext, BlockFunction, BlockInfo, WorkerOptions } from "./worker.js";
