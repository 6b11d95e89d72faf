import assert from "node:assert/strict";
import { test } from "node:test";

import { CallApi, SwitchboardError } from "../src/api.js";

interface Seen {
  url: string;
  init: RequestInit;
}

function fakeFetch(status: number, body: unknown, seen: Seen[]) {
  return async (url: string, init?: RequestInit) => {
    seen.push({ url, init: init ?? {} });
    return new Response(typeof body === "string" ? body : JSON.stringify(body), { status });
  };
}

test("createCall posts the documented body with the user token and returns the join info", async () => {
  const seen: Seen[] = [];
  const api = new CallApi("http://sb.test/", () => "user-token", "web-1", fakeFetch(201, {
    call: { callId: "c1", state: "ringing", somethingNew: 1 },
    callToken: "call-token",
    rtcPath: "/v1/rtc",
    rtcUrl: "wss://sfu-2.sb.test/v1/rtc",
    iceServers: [{ urls: ["turn:127.0.0.1:3478?transport=udp"], username: "u", credential: "p" }],
  }, seen));
  const info = await api.createCall("bob", true);
  assert.deepEqual(info, {
    callId: "c1",
    callToken: "call-token",
    rtcPath: "/v1/rtc",
    rtcUrl: "wss://sfu-2.sb.test/v1/rtc",
    iceServers: [{ urls: ["turn:127.0.0.1:3478?transport=udp"], username: "u", credential: "p" }],
  });
  assert.equal(seen[0].url, "http://sb.test/v1/calls");
  assert.equal((seen[0].init.headers as Record<string, string>).authorization, "Bearer user-token");
  assert.deepEqual(JSON.parse(String(seen[0].init.body)), { calleeUserIds: ["bob"], type: "video", deviceId: "web-1", dataChannels: false });
});

test("a device registered with dataChannels creates calls that allow them", async () => {
  const seen: Seen[] = [];
  const api = new CallApi("http://sb.test", () => "t", "web-1", fakeFetch(201, { call: { callId: "c1" }, callToken: "ct", rtcPath: "/v1/rtc" }, seen), true);
  await api.createCall("bob", false);
  assert.equal(JSON.parse(String(seen[0].init.body)).dataChannels, true);
});

test("a refusal keeps the server's status and code", async () => {
  const api = new CallApi("http://sb.test", () => "t", "web-1",
    fakeFetch(409, { code: "answered_elsewhere", message: "another device answered" }, []));
  await assert.rejects(api.accept("c1"), (e: unknown) =>
    e instanceof SwitchboardError && e.status === 409 && e.code === "answered_elsewhere");
});

test("a call that is over at once (callee has no device) is an error, not a join", async () => {
  const api = new CallApi("http://sb.test", () => "t", "web-1",
    fakeFetch(201, { call: { callId: "c1", state: "ended", endReason: "unavailable" } }, []));
  await assert.rejects(api.createCall("nobody", false), (e: unknown) =>
    e instanceof SwitchboardError && e.code === "unavailable");
});

test("an unreachable server and a non-JSON error body are typed errors too", async () => {
  const down = new CallApi("http://sb.test", () => "t", "web-1", async () => {
    throw new TypeError("fetch failed");
  });
  await assert.rejects(down.end("c1"), (e: unknown) => e instanceof SwitchboardError && e.code === "unreachable");
  const proxy = new CallApi("http://sb.test", () => "t", "web-1", fakeFetch(502, "<html>bad gateway</html>", []));
  await assert.rejects(proxy.decline("c1"), (e: unknown) => e instanceof SwitchboardError && e.status === 502 && e.code === "http_502");
});
