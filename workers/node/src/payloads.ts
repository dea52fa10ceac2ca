// Block values on the wire: one Payload per value, JSON as "json/plain", null as
// "binary/null", raw bytes as "binary/plain" (see Payload in proto/tideflow/api/v1/common.proto).
import type { Payload, Payloads } from "./gen/tideflow/api/v1/common.js";

export const JSON_PLAIN = "json/plain";
export const BINARY_NULL = "binary/null";
export const BINARY_PLAIN = "binary/plain";

/** A value that cannot become a payload, or a payload this worker cannot read. */
export class PayloadError extends Error {
  override name = "PayloadError";
}

function payload(encoding: string, data: Buffer): Payload {
  return { metadata: { encoding: Buffer.from(encoding, "utf8") }, data };
}

/** One value as a Payload: null/undefined -> binary/null, a Uint8Array -> binary/plain,
 * anything else -> its JSON. */
export function toPayload(value: unknown): Payload {
  if (value === null || value === undefined) return payload(BINARY_NULL, Buffer.alloc(0));
  if (value instanceof Uint8Array) return payload(BINARY_PLAIN, Buffer.from(value));
  let json: string | undefined;
  try {
    json = JSON.stringify(value, (_key, v: unknown) => {
      // JSON.stringify would write NaN and Infinity as null and a BigInt not at all; the
      // server refuses neither quietly, so neither does this.
      if (typeof v === "number" && !Number.isFinite(v)) throw new PayloadError(`${v} is not JSON`);
      if (typeof v === "bigint") throw new PayloadError("a BigInt is not JSON; use a string");
      return v;
    });
  } catch (e) {
    if (e instanceof PayloadError) throw e;
    throw new PayloadError(`value is not JSON: ${(e as Error).message}`);
  }
  if (json === undefined) throw new PayloadError(`a ${typeof value} is not JSON`);
  return payload(JSON_PLAIN, Buffer.from(json, "utf8"));
}

/** Values as Payloads, one payload each. */
export function toPayloads(...values: unknown[]): Payloads {
  return { payloads: values.map(toPayload) };
}

/** One payload's value: JSON parsed, binary/null as null, binary/plain as a Buffer. */
export function fromPayload(p: Payload): unknown {
  const encoding = p.metadata["encoding"]?.toString("utf8") ?? "";
  switch (encoding) {
    case JSON_PLAIN:
      try {
        return JSON.parse(p.data.toString("utf8")) as unknown;
      } catch (e) {
        throw new PayloadError(`json/plain payload is not JSON: ${(e as Error).message}`);
      }
    case BINARY_NULL:
      return null;
    case BINARY_PLAIN:
      return p.data;
    default:
      throw new PayloadError(`cannot read a payload encoded ${JSON.stringify(encoding)}`);
  }
}

/** The first value of `payloads`; null when there is none (no payloads is null too). */
export function fromPayloads(payloads: Payloads | undefined): unknown {
  const first = payloads?.payloads[0];
  return first === undefined ? null : fromPayload(first);
}
