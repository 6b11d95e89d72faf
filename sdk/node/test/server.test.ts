// The SDK against a real `switchboard` (started by sfu/tests/server_sdk.rs,
// which passes SWITCHBOARD_URL, SWITCHBOARD_API_KEY = id:secret,
// WEBHOOK_PORT and WEBHOOK_SECRET; the server posts its push webhooks to
// that port, where this test receives and verifies them).

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer, type IncomingMessage } from "node:http";
import { after, before, test } from "node:test";

import { Webhook } from "standardwebhooks";

import {
  type CallEvent,
  type PushWebhook,
  Switchboard,
  SwitchboardError,
  WebhookVerificationError,
  mintUserToken,
  verifyWebhook,
} from "../src/index.js";

const baseUrl = process.env.SWITCHBOARD_URL;
const [keyId, keySecret] = (process.env.SWITCHBOARD_API_KEY ?? "").split(":");
const webhookPort = Number(process.env.WEBHOOK_PORT);
const webhookSecret = process.env.WEBHOOK_SECRET ?? "";
const eventSecret = process.env.EVENT_WEBHOOK_SECRET ?? "";
if (!baseUrl || !keyId || !keySecret || !webhookPort || !webhookSecret || !eventSecret) {
  throw new Error(
    "run through sfu/tests/server_sdk.rs (SWITCHBOARD_URL, SWITCHBOARD_API_KEY, WEBHOOK_PORT, WEBHOOK_SECRET, EVENT_WEBHOOK_SECRET)",
  );
}
const key = { id: keyId, secret: keySecret };
const sb = new Switchboard(key, { baseUrl, backoffMs: 50 });

// The app backend's webhook endpoints (pushes at /push, call events at
// /events): every delivery verified by the SDK; call events also by the
// Standard Webhooks reference library.
const pushes: PushWebhook[] = [];
const events: CallEvent[] = [];
const refused: string[] = [];
const receiver = createServer(async (req: IncomingMessage, res) => {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const raw = Buffer.concat(chunks);
  try {
    if (req.url === "/events") {
      const event = verifyWebhook<CallEvent>(raw, req.headers, eventSecret);
      new Webhook(eventSecret).verify(raw.toString("utf8"), req.headers as Record<string, string>);
      events.push(event);
    } else {
      pushes.push(verifyWebhook<PushWebhook>(raw, req.headers, webhookSecret));
    }
    res.writeHead(200).end();
  } catch (e) {
    refused.push(String(e));
    res.writeHead(400).end();
  }
});
before(() => new Promise<void>((resolve) => receiver.listen(webhookPort, "127.0.0.1", resolve)));
after(() => new Promise<void>((resolve) => receiver.close(() => resolve())));

async function until<T>(what: string, probe: () => T | undefined, limitMs = 10_000): Promise<T> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function refusal(p: Promise<unknown>): Promise<SwitchboardError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof SwitchboardError, `not a SwitchboardError: ${e}`);
    return e;
  }
  assert.fail("the request succeeded");
}

const apnsVoip = (n: number) => n.toString(16).padStart(2, "0").repeat(32);

test("a minted token is accepted; a wrong key or an expired one is refused", async () => {
  const token = await sb.mintUserToken("sdk-alice", { ttlSeconds: 600 });
  const devices = await sb.withUserToken(token).devices.list();
  assert.ok(Array.isArray(devices));

  const wrong = await mintUserToken({ id: key.id, secret: "x".repeat(40) }, "sdk-alice");
  assert.equal((await refusal(sb.withUserToken(wrong).devices.list())).code, "unauthorized");
  const expired = await mintUserToken(key, "sdk-alice", { ttlSeconds: 60, now: new Date(Date.now() - 3600_000) });
  const e = await refusal(sb.withUserToken(expired).devices.list());
  assert.equal(e.status, 401);
  assert.equal(e.code, "token_expired");
  await assert.rejects(sb.mintUserToken("sdk-alice", { ttlSeconds: 25 * 3600 }), RangeError);
});

test("a call from create to end, answered on a second device with a user token", async () => {
  const alice = sb.forUser("sdk-alice");
  const bob = sb.forUser("sdk-bob");
  await alice.devices.register({ deviceId: "alice-web", platform: "web", capabilities: { video: true } });
  // Bob's iPhone rings by push (the webhook above); his web tab answers.
  await bob.devices.register({
    deviceId: "bob-iphone",
    platform: "ios",
    push: { apnsVoip: apnsVoip(1), apnsAlert: apnsVoip(2) },
    apnsEnvironment: "sandbox",
    bundleId: "app.example.calls",
    capabilities: { video: true, callkit: true },
  });
  await bob.devices.register({ deviceId: "bob-web", platform: "web" });
  assert.deepEqual((await bob.devices.list()).map((d) => d.deviceId).sort(), ["bob-iphone", "bob-web"]);
  await bob.devices.heartbeat("bob-web");

  // The same Idempotency-Key twice: one call.
  const request = { calleeUserIds: ["sdk-bob"], type: "video" as const, deviceId: "alice-web", callerDisplayName: "Alice" };
  const created = await alice.calls.create(request, { idempotencyKey: "sdk-call-1" });
  const again = await alice.calls.create(request, { idempotencyKey: "sdk-call-1" });
  assert.equal(again.call.callId, created.call.callId);
  assert.ok(created.callToken, "the caller gets a call token");
  assert.equal(created.rtcPath, "/v1/rtc");
  const callId = created.call.callId;
  assert.equal((await alice.calls.list({ limit: 10 })).filter((c) => c.callId === callId).length, 1);

  // The ring reached Bob's iPhone as a signed push webhook.
  const ring = await until("the ring's push webhook", () =>
    pushes.find((p) => p.deviceId === "bob-iphone" && p.payload.callId === callId && p.payload.event === "incoming_call"),
  );
  assert.equal(ring.tokenKind, "apnsVoip");
  assert.equal(ring.userId, "sdk-bob");
  assert.deepEqual(refused, []);

  // Bob answers from his web tab, acting with his own user token.
  const bobToken = await sb.mintUserToken("sdk-bob");
  const accepted = await sb.withUserToken(bobToken).calls.accept(callId, { deviceId: "bob-web" });
  assert.ok(accepted.callToken);
  assert.equal(accepted.call.participants.find((p) => p.userId === "sdk-bob")?.deviceId, "bob-web");
  // His iPhone, still ringing, is too late: the typed error says why.
  const late = await refusal(bob.calls.accept(callId, { deviceId: "bob-iphone" }));
  assert.equal(late.status, 409);
  assert.equal(late.code, "answered_elsewhere");

  const ended = await alice.calls.end(callId);
  assert.equal(ended.call.state, "ended");
  assert.equal((await bob.calls.get(callId)).state, "ended");
  // The iPhone was told to stop ringing (an alert push, never VoIP).
  const cancel = await until("the cancel's push webhook", () =>
    pushes.find((p) => p.deviceId === "bob-iphone" && p.payload.callId === callId && p.payload.event === "call_cancelled"),
  );
  assert.equal(cancel.tokenKind, "apnsAlert");

  // The call's events reached the backend in order: created, the ring of
  // the iPhone (by push: the web tab has no events socket open, so it is
  // not rung), the answer, the end.
  const ofCall = await until("the call's ended event", () => {
    const mine = events.filter((e) => e.callId === callId);
    return mine.some((e) => e.type === "call.ended") ? mine : undefined;
  });
  assert.deepEqual(
    ofCall.map((e) => e.type),
    ["call.created", "call.ringing", "call.answered", "call.ended"],
  );
  assert.deepEqual(ofCall.map((e) => e.sequence), [1, 2, 3, 4]);
  assert.deepEqual(ofCall[1].data, { userId: "sdk-bob", deviceId: "bob-iphone", via: "push" });
  assert.deepEqual(refused, []);

  await bob.devices.delete("bob-iphone");
  assert.equal((await refusal(bob.devices.delete("bob-iphone"))).code, "not_found");
});

test("a bad request gets the contract's code and is not retried", async () => {
  let attempts = 0;
  const counting = new Switchboard(key, {
    baseUrl,
    fetch: (input, init) => {
      attempts++;
      return fetch(input, init);
    },
  });
  const e = await refusal(
    counting.forUser("sdk-carol").calls.create({ calleeUserIds: ["sdk-carol"], type: "audio", deviceId: "d" }),
  );
  assert.equal(e.status, 400);
  assert.equal(e.code, "bad_request");
  assert.equal(attempts, 1);
});

test("429 and 5xx are retried (after Retry-After), with the same Idempotency-Key", async () => {
  await sb.forUser("sdk-dave").devices.register({ deviceId: "dave-web", platform: "web" });
  const keys: (string | null)[] = [];
  let attempts = 0;
  const flaky = new Switchboard(key, {
    baseUrl,
    backoffMs: 10,
    fetch: async (input, init) => {
      attempts++;
      keys.push(new Headers(init?.headers).get("idempotency-key"));
      if (attempts === 1) {
        return new Response(JSON.stringify({ code: "rate_limited", message: "slow down" }), {
          status: 429,
          headers: { "retry-after": "1" },
        });
      }
      if (attempts === 2) return new Response("bad gateway", { status: 502 });
      return fetch(input, init);
    },
  });
  const started = Date.now();
  const created = await flaky
    .forUser("sdk-dave")
    .calls.create({ calleeUserIds: ["sdk-erin"], type: "audio", deviceId: "dave-web" });
  assert.equal(attempts, 3);
  assert.ok(Date.now() - started >= 1000, "Retry-After was not honoured");
  assert.ok(keys[0] && keys.every((k) => k === keys[0]), `the retries changed the key: ${keys}`);
  // sdk-erin has no devices: the call ends at once.
  assert.equal(created.call.endReason, "no_devices");
});

test("verifyWebhook refuses a changed body, a wrong secret and an old signature", () => {
  const body = JSON.stringify({ hello: "world" });
  const t = Math.floor(Date.now() / 1000);
  const pushHeader = (secret: string, at: number, text: string) =>
    `t=${at},v1=${createHmac("sha256", secret).update(`${at}.${text}`).digest("hex")}`;
  const push = (signature: string) => ({ "x-switchboard-signature": signature });
  assert.deepEqual(verifyWebhook(body, push(pushHeader(webhookSecret, t, body)), webhookSecret), { hello: "world" });
  // Rotation: any one of several signatures may match.
  const rotated = `${pushHeader("old-secret", t, body)},v1=${pushHeader(webhookSecret, t, body).split("v1=")[1]}`;
  assert.deepEqual(verifyWebhook(body, push(rotated), webhookSecret), { hello: "world" });
  const refusedBy = (text: string, headers: Record<string, string>, secret: string) =>
    assert.throws(() => verifyWebhook(text, headers, secret), WebhookVerificationError);
  refusedBy(body + " ", push(pushHeader(webhookSecret, t, body)), webhookSecret);
  refusedBy(body, push(pushHeader("another-secret", t, body)), webhookSecret);
  refusedBy(body, push(pushHeader(webhookSecret, t - 600, body)), webhookSecret);
  refusedBy(body, push("garbage"), webhookSecret);
  refusedBy(body, {}, webhookSecret);

  // Call events: signed by the Standard Webhooks reference library, checked
  // by ours (and the other way round, in the receiver above).
  const id = "evt_test";
  const signed = (at: Date, secret = eventSecret) => ({
    "webhook-id": id,
    "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
    "webhook-signature": new Webhook(secret).sign(id, at, body),
  });
  assert.deepEqual(verifyWebhook(body, signed(new Date()), eventSecret), { hello: "world" });
  refusedBy(body + " ", signed(new Date()), eventSecret);
  refusedBy(body, signed(new Date(), "whsec_" + Buffer.from("x".repeat(32)).toString("base64")), eventSecret);
  refusedBy(body, signed(new Date(Date.now() - 600_000)), eventSecret);
});
