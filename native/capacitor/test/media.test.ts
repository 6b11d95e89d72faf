// The layer arithmetic the web client shares with the server
// (signaling/PROTOCOL.md `qualityUpdate` and `updateSubscription`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { dataFrame, encodingFor, parseDataFrame, subscriptionSize } from "../src/media.js";

test("qualities name encodings lowest first, as the server counts them", () => {
  assert.deepEqual(["low", "medium", "high"].map((q) => encodingFor(q as any, 3)), [0, 1, 2]);
  assert.deepEqual(["low", "medium", "high"].map((q) => encodingFor(q as any, 2)), [0, 1, 1]);
  assert.deepEqual(["low", "medium", "high"].map((q) => encodingFor(q as any, 1)), [0, 0, 0]);
});

test("a view asks for its size in whole pixels within the server's bounds", () => {
  assert.deepEqual(subscriptionSize(320.4, 179.6), { width: 320, height: 180 });
  assert.deepEqual(subscriptionSize(0.2, 40000), { width: 1, height: 16384 });
});

test("a data frame is what the server relays, refused here when the server would refuse it", () => {
  assert.equal(dataFrame("hi"), '{"payload":"hi"}');
  assert.equal(dataFrame("hi", ["PA_1"]), '{"to":["PA_1"],"payload":"hi"}');
  // 16 KiB of UTF-8, not of UTF-16 code units: 5,462 three-byte characters are over.
  assert.doesNotThrow(() => dataFrame("x".repeat(16 * 1024)));
  assert.throws(() => dataFrame("€".repeat(5462)), /message_too_large/);
  assert.throws(() => dataFrame("hi", []), /bad_message/);
  assert.throws(() => dataFrame("hi", Array.from({ length: 65 }, (_, i) => `PA_${i}`)), /bad_message/);
});

test("only the server's {from, payload} is taken from a data channel", () => {
  assert.deepEqual(parseDataFrame('{"from":"PA_1","payload":"hi"}'), { from: "PA_1", payload: "hi" });
  for (const bad of ['{"payload":"hi"}', '{"from":1,"payload":"hi"}', "not json", new ArrayBuffer(4)]) {
    assert.equal(parseDataFrame(bad), undefined);
  }
});
