// The layer arithmetic the web client shares with the server
// (signaling/PROTOCOL.md `qualityUpdate` and `updateSubscription`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodingFor, qualityForHeight } from "../src/media.js";

test("qualities name encodings lowest first, as the server counts them", () => {
  assert.deepEqual(["low", "medium", "high"].map((q) => encodingFor(q as any, 3)), [0, 1, 2]);
  assert.deepEqual(["low", "medium", "high"].map((q) => encodingFor(q as any, 2)), [0, 1, 1]);
  assert.deepEqual(["low", "medium", "high"].map((q) => encodingFor(q as any, 1)), [0, 0, 0]);
});

test("a view gets the layer that fills its height and no more", () => {
  assert.equal(qualityForHeight(120), "low");
  assert.equal(qualityForHeight(180), "low");
  assert.equal(qualityForHeight(181), "medium");
  assert.equal(qualityForHeight(360), "medium");
  assert.equal(qualityForHeight(720), "high");
});
