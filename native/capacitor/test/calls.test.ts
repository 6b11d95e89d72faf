import assert from "node:assert/strict";
import { test } from "node:test";

import { Calls } from "../src/calls.js";
import type { Effect } from "../src/calls.js";
import { parseEvent } from "../src/protocol.js";
import type { ServerEvent } from "../src/protocol.js";

const NOW = 1_764_052_800_000;

function ring(callId: string, expiresAt = NOW + 30_000): ServerEvent {
  return { type: "ringing", callId, fromUserId: "alice", video: true, expiresAt };
}

const kinds = (effects: Effect[]) => effects.map((e) => e.kind);

test("a ring is announced once, acknowledged, and a repeat (socket replay) is not a second call", () => {
  const calls = new Calls();
  const first = calls.onServerEvent(ring("c1"), NOW);
  assert.deepEqual(kinds(first), ["incomingCall", "callStateChanged", "ack"]);
  assert.deepEqual(first[0], {
    kind: "incomingCall",
    data: { callId: "c1", fromUserId: "alice", video: true, expiresAt: NOW + 30_000 },
  });
  assert.deepEqual(calls.onServerEvent(ring("c1"), NOW + 1000), []);
  assert.equal(calls.state("c1"), "ringing");
});

test("a ring past its deadline is ignored on the web", () => {
  const calls = new Calls();
  assert.deepEqual(calls.onServerEvent(ring("c1", NOW - 1), NOW), []);
  assert.equal(calls.state("c1"), undefined);
});

test("cancels end a ringing call with the matching reason, and the call stays over", () => {
  for (const [reason, expected] of [
    ["answered_elsewhere", "answered_elsewhere"],
    ["declined_elsewhere", "declined_elsewhere"],
    ["missed", "missed"],
    ["caller_cancelled", "remote_ended"],
    ["a_reason_from_a_newer_server", "remote_ended"],
  ] as const) {
    const calls = new Calls();
    calls.onServerEvent(ring("c1"), NOW);
    const effects = calls.onServerEvent({ type: "cancelled", callId: "c1", reason }, NOW);
    assert.deepEqual(effects.at(-1), { kind: "callEnded", data: { callId: "c1", reason: expected } }, reason);
    // A late replay of the ring does not bring it back.
    assert.deepEqual(calls.onServerEvent(ring("c1"), NOW), []);
  }
});

test("an answered call connects with its media; the remote hang-up completes it", () => {
  const calls = new Calls();
  calls.onServerEvent(ring("c1"), NOW);
  const answered = calls.answer("c1");
  assert.equal(answered.accept, true);
  assert.equal(calls.state("c1"), "connecting");
  // A second tap does not accept twice.
  assert.equal(calls.answer("c1").accept, false);
  assert.deepEqual(calls.mediaConnected("c1"), [{ kind: "callStateChanged", data: { callId: "c1", state: "connected" } }]);
  const ended = calls.onServerEvent({ type: "ended", callId: "c1" }, NOW);
  assert.deepEqual(ended.at(-1), { kind: "callEnded", data: { callId: "c1", reason: "completed" } });
});

test("an outgoing call connects only once the callee answered, even if media is up first", () => {
  const calls = new Calls();
  assert.deepEqual(calls.started("c2", true, "bob"), [{ kind: "callStateChanged", data: { callId: "c2", state: "outgoing" } }]);
  assert.deepEqual(calls.mediaConnected("c2"), []);
  assert.equal(calls.state("c2"), "outgoing");
  assert.deepEqual(kinds(calls.onServerEvent({ type: "accepted", callId: "c2" }, NOW)), ["callStateChanged"]);
  assert.equal(calls.state("c2"), "connected");
});

test("an answer heard before the create response returned still connects the call", () => {
  const calls = new Calls();
  // The events socket outran the create response; answers for calls ended here are not kept.
  assert.deepEqual(calls.onServerEvent({ type: "accepted", callId: "c4" }, NOW), []);
  calls.started("c4", false, "bob");
  assert.deepEqual(calls.mediaConnected("c4"), [{ kind: "callStateChanged", data: { callId: "c4", state: "connected" } }]);
  // A replayed answer after that changes nothing.
  assert.deepEqual(calls.onServerEvent({ type: "accepted", callId: "c4" }, NOW), []);
  // Without an early answer, media alone does not connect an outgoing call.
  calls.started("c5", false, "bob");
  assert.deepEqual(calls.mediaConnected("c5"), []);
});

test("a callee that never answers: the server's end is remote_ended, not completed", () => {
  const calls = new Calls();
  calls.started("c3", false, "bob");
  const ended = calls.onServerEvent({ type: "ended", callId: "c3" }, NOW);
  assert.deepEqual(ended.at(-1), { kind: "callEnded", data: { callId: "c3", reason: "remote_ended" } });
  assert.deepEqual(calls.end("c3", "completed"), [], "ending twice reports nothing");
});

test("server messages parse with unknown fields ignored and unknown types dropped", () => {
  assert.deepEqual(
    parseEvent(JSON.stringify({ type: "call.ringing", callId: "c1", fromUserId: "alice", callType: "audio", expiresAt: 5, brandNew: { x: 1 } })),
    { type: "ringing", callId: "c1", fromUserId: "alice", video: false, expiresAt: 5 },
  );
  assert.deepEqual(parseEvent(JSON.stringify({ type: "call.event", callId: "c1", event: "call.accepted" })), { type: "accepted", callId: "c1" });
  assert.deepEqual(parseEvent(JSON.stringify({ type: "call.event", callId: "c1", event: "call.ended" })), { type: "ended", callId: "c1" });
  assert.deepEqual(parseEvent(JSON.stringify({ type: "authenticated", extra: true })), { type: "authenticated" });
  assert.deepEqual(parseEvent(JSON.stringify({ type: "authenticated", flags: { calling: true, odd: 3 } })), {
    type: "authenticated",
    flags: { calling: true },
  });
  assert.deepEqual(parseEvent(JSON.stringify({ type: "flags", flags: { video_calls: false } })), {
    type: "flags",
    flags: { video_calls: false },
  });
  for (const raw of [
    "not json",
    "null",
    "[]",
    JSON.stringify({ type: "call.event", callId: "c1", event: "call.busy" }),
    JSON.stringify({ type: "call.ringing", callId: "c1" }),
    JSON.stringify({ type: "something.new", callId: "c1" }),
    JSON.stringify({ type: "call.cancelled", callId: 7, reason: "missed" }),
    JSON.stringify({ type: "flags", flags: ["video_calls"] }),
    JSON.stringify({ type: "call.unsupported", callId: "c1", fromUserId: "alice", callType: "video" }),
  ]) {
    assert.equal(parseEvent(raw), null, raw);
  }
});

test("active calls list what a late UI shows first, with the user's mute and hold, and forget ended calls", () => {
  const calls = new Calls();
  calls.onServerEvent(ring("c1"), NOW);
  calls.started("c2", false, "bob");
  assert.equal(calls.setMuted("c2", true), true);
  assert.equal(calls.setHeld("c2", true), true);
  assert.equal(calls.setMuted("unknown", true), false, "no such call");
  assert.deepEqual(calls.active(), [
    { callId: "c1", state: "ringing", video: true, outgoing: false, remoteUserId: "alice", muted: false, held: false },
    { callId: "c2", state: "outgoing", video: false, outgoing: true, remoteUserId: "bob", muted: true, held: true },
  ]);
  calls.answer("c1");
  calls.end("c2", "completed");
  assert.deepEqual(
    calls.active().map((c) => [c.callId, c.state]),
    [["c1", "connecting"]],
  );
});
