// What a block throws, as the Failure the server records (proto/tideflow/api/v1/failure.proto).
import type { Failure } from "./gen/tideflow/api/v1/failure.js";
import type { Payloads } from "./gen/tideflow/api/v1/common.js";
import { toPayloads } from "./payloads.js";

export const FAILURE_SOURCE = "node";
const MAX_CAUSES = 8; // `cause` links sent with a failure; each carries its stack trace

export interface ApplicationErrorOptions {
  /** No retry, whatever the block's retry policy says. */
  nonRetryable?: boolean;
  /** Values sent with the failure, one json/plain (or binary/null) payload each. */
  details?: readonly unknown[];
  cause?: unknown;
}

/** A failure with a type the retry policy can name (non_retryable_error_types) and
 * optional details. Any other Error fails the attempt with its `name` as the type, retryable. */
export class ApplicationError extends Error {
  override name = "ApplicationError";
  readonly type: string;
  readonly nonRetryable: boolean;
  readonly details: readonly unknown[];

  constructor(type: string, message: string, options: ApplicationErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.type = type;
    this.nonRetryable = options.nonRetryable ?? false;
    this.details = options.details ?? [];
  }
}

function detailsOf(error: ApplicationError): Payloads | undefined {
  if (error.details.length === 0) return undefined;
  try {
    return toPayloads(...error.details);
  } catch (e) {
    // The failure itself matters more than its details.
    console.error(`tideflow: details of ${error.type} dropped: ${(e as Error).message}`);
    return undefined;
  }
}

/** The Failure for what a block threw, with its `cause` chain as causes. */
export function toFailure(thrown: unknown, depth = 0): Failure {
  const error = thrown instanceof Error ? thrown : undefined;
  const failure: Failure = {
    message: error ? error.message || error.name : String(thrown),
    source: FAILURE_SOURCE,
    stackTrace: error?.stack ?? "",
    cause: undefined,
    applicationFailureInfo: {
      type: error ? error.name || "Error" : "Error",
      nonRetryable: false,
      details: undefined,
    },
  };
  if (error instanceof ApplicationError) {
    failure.applicationFailureInfo = {
      type: error.type,
      nonRetryable: error.nonRetryable,
      details: detailsOf(error),
    };
  }
  if (error?.cause !== undefined && depth < MAX_CAUSES) {
    failure.cause = toFailure(error.cause, depth + 1);
  }
  return failure;
}
