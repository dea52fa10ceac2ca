import assert from "node:assert/strict";
import { test } from "node:test";

import { ApplicationError, fromPayloads, toFailure, toPayloads } from "../index.js";

test("JSON values round-trip as json/plain, null as binary/null", () => {
  for (const value of [{ a: 1.5, b: ["x", null] }, "text", 3, true]) {
    const payloads = toPayloads(value);
    assert.equal(payloads.payloads[0]?.metadata["encoding"]?.toString(), "json/plain");
    assert.deepEqual(fromPayloads(payloads), value);
  }
  const none = toPayloads(null);
  assert.equal(none.payloads[0]?.metadata["encoding"]?.toString(), "binary/null");
  assert.equal(none.payloads[0]?.data.length, 0);
  assert.equal(fromPayloads(none), null);
  assert.equal(fromPayloads(undefined), null);
});

test("values JSON cannot carry are refused, not silently changed", () => {
  assert.throws(() => toPayloads(Number.NaN), /not JSON/);
  assert.throws(() => toPayloads({ n: 10n }), /BigInt/);
});

test("an application error keeps its type, flag and details", () => {
  const failure = toFailure(new ApplicationError("Fatal", "fatal: bad scan", { nonRetryable: true, details: [{ reason: "bad scan" }] }));
  assert.equal(failure.message, "fatal: bad scan");
  assert.equal(failure.source, "node");
  assert.equal(failure.applicationFailureInfo?.type, "Fatal");
  assert.equal(failure.applicationFailureInfo?.nonRetryable, true);
  assert.deepEqual(fromPayloads(failure.applicationFailureInfo?.details), { reason: "bad scan" });
});

test("a plain error is retryable, typed by its name, with its stack and causes", () => {
  const failure = toFailure(new TypeError("no pages", { cause: new RangeError("page 3") }));
  assert.equal(failure.applicationFailureInfo?.type, "TypeError");
  assert.equal(failure.applicationFailureInfo?.nonRetryable, false);
  assert.match(failure.stackTrace, /payloads\.test/);
  assert.equal(failure.cause?.applicationFailureInfo?.type, "RangeError");
});
