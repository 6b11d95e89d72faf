// Headless Chromium against a real `switchboard` process.
//
//   node run.mjs <path-to-switchboard> <scenario>
//
// Starts the server (dev token endpoint on, short reconnect grace), serves
// page.html + client.js on loopback, drives Chromium with playwright-core and
// exits non-zero if the scenario's assertions fail. Every wait is bounded.
// Run it inside `unshare -n` (the Rust test does) so every ICE candidate is
// on 127.0.0.1.

import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { createSocket } from "node:dgram";
import { readFile } from "node:fs/promises";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { createConnection, createServer as createTcpServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const [, , serverBin, scenario] = process.argv;
const GRACE_SECONDS = 3;

const CHROMIUM_FLAGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
  "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--autoplay-policy=no-user-gesture-required",
];

// Chromium's stderr in the own-egress scenario (checked for SRTP unprotect
// failures); the name carries the test's process id: /tmp is shared.
const CHROMIUM_LOG = join(tmpdir(), `sb-chromium-${process.pid}.log`);

function log(...args) {
  console.log(`[${scenario}]`, ...args);
}

function check(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeoutMs = 20000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(250);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

async function freePort(kind) {
  if (kind === "udp") {
    const s = createSocket("udp4");
    await new Promise((r) => s.bind(0, "127.0.0.1", r));
    const port = s.address().port;
    s.close();
    return port;
  }
  const s = createTcpServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * The operator API key of the scenarios on a production node (`id:secret`);
 * a node started elsewhere names its own.
 */
const OPERATOR_KEY = process.env.SWITCHBOARD_OPERATOR_KEY || "browser-operator:browser-operator-secret-0123456789abcdef";
/** A node started elsewhere (the container image's test), instead of one of ours. */
const EXTERNAL_BASE = process.env.SWITCHBOARD_BASE;

async function startSwitchboard(extraEnv = {}) {
  const httpPort = await freePort("tcp");
  const udpPort = await freePort("udp");
  // TURN as deployed by default: UDP and TCP on one port.
  const turnPort = await freePort("tcp");
  const child = spawn(serverBin, [], {
    env: {
      ...process.env,
      SWITCHBOARD_HTTP_LISTEN: `127.0.0.1:${httpPort}`,
      SWITCHBOARD_RTC_UDP_BIND: `127.0.0.1:${udpPort}`,
      SWITCHBOARD_ANNOUNCE_IPS: "127.0.0.1",
      SWITCHBOARD_TURN_UDP_LISTEN: `127.0.0.1:${turnPort}`,
      SWITCHBOARD_TURN_TCP_LISTEN: `127.0.0.1:${turnPort}`,
      SWITCHBOARD_DEV_TOKEN_ENDPOINT: extraEnv.SWITCHBOARD_API_KEY ? "false" : "true",
      SWITCHBOARD_RECONNECT_GRACE_SECONDS: String(GRACE_SECONDS),
      SWITCHBOARD_DATA_DIR: mkdtempSync(join(tmpdir(), "switchboard-browser-")),
      // Info from the SFU is kept, not shown: printed only if the scenario
      // fails, to tell a server-side stall from a browser one.
      // The shard's debug lines are its slow steps and "stream paused".
      RUST_LOG: process.env.RUST_LOG || "warn,sfu=info,sfu::server::shard=debug,stun_proto=off",
      NO_COLOR: "1",
      ...extraEnv,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  // The log goes to stdout; panics and start-up errors to stderr.
  for (const stream of [child.stdout, child.stderr]) {
    let partial = "";
    stream.on("data", (chunk) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop();
      for (const line of lines) {
        if (!/ (INFO|DEBUG|TRACE) /.test(line)) process.stderr.write(line + "\n");
        serverLog.push(line);
        if (serverLog.length > SERVER_LOG_LINES) serverLog.shift();
        const paused = line.includes("stream paused") && line.match(/participant=(\S+) .*kind="?(\w+)"? gap_ms=(\d+)/);
        if (paused) streamGaps.push({ participant: paused[1], kind: paused[2], gapMs: Number(paused[3]) });
      }
    });
  }
  const base = `http://127.0.0.1:${httpPort}`;
  await waitFor("switchboard /healthz", async () => {
    try { return (await fetch(`${base}/healthz`)).ok; } catch { return false; }
  }, 15000);
  return { child, base, ws: `ws://127.0.0.1:${httpPort}/v1/rtc`, udpPort };
}

// A self-signed certificate for 127.0.0.1 (openssl), as TURN TLS settings.
function testCertificate() {
  const dir = mkdtempSync(join(tmpdir(), "switchboard-turn-tls-"));
  const [cert, key] = [join(dir, "cert.pem"), join(dir, "key.pem")];
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1"], { stdio: "ignore" });
  return {
    SWITCHBOARD_TURN_TLS_CERT_FILE: cert,
    SWITCHBOARD_TURN_TLS_KEY_FILE: key,
    SWITCHBOARD_TURN_TLS_LISTEN: "127.0.0.1:0",
  };
}

async function startStatic() {
  const files = { "/page.html": "text/html", "/client.js": "text/javascript" };
  const server = createServer(async (req, res) => {
    const type = files[req.url];
    if (req.url === "/favicon.ico") { res.writeHead(204); res.end(); return; }
    if (!type) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { "content-type": type });
    res.end(await readFile(join(here, req.url.slice(1))));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { server, base: `http://127.0.0.1:${server.address().port}` };
}

let sb, sb2, redis, web, browser;
// The server's latest log lines and every page opened, for a failure report.
const SERVER_LOG_LINES = Number(process.env.SERVER_LOG_LINES || 300);
const serverLog = [];
// Every "stream paused" the server logged: a published track's packets
// stopped reaching the engine for `gapMs`.
const streamGaps = [];
const opened = [];

async function reportFailure() {
  for (const p of opened) {
    const state = await p.page.evaluate(() => ({
      timeline: window.client.timeline.slice(-25),
      remote: [...window.client.remote.values()].map((e) => [e.participantId, e.kind, e.mid]),
      coloursSeen: window.sb.coloursSeen(),
      videoIn: null,
      signaling: { pub: window.client.pub?.signalingState, sub: window.client.sub?.signalingState },
    })).catch((e) => `unreadable: ${e.message}`);
    if (typeof state === "object") {
      state.videoIn = (await inbound(p).catch(() => ({ video: [] }))).video
        .map((v) => [v.mid, v.packetsReceived, v.framesDecoded]);
      // What a publisher was sending, by encoding: a layer that did not
      // come back tells the publisher's side from the server's.
      state.videoOut = await p.page.evaluate(() => window.sb.outboundLayers()).catch(() => null);
      state.availableOutgoingBitrate = await p.page.evaluate(() => window.client.pub && window.sb.availableOutgoingBitrate()).catch(() => null);
    }
    console.error(`[${scenario}] page ${p.name} (${p.pid}): ${JSON.stringify(state)}`);
  }
  if (sb?.base) {
    const keyframeRequests = await metric("switchboard_keyframe_requests_total").catch(() => null);
    console.error(`[${scenario}] keyframe requests to publishers: ${keyframeRequests}`);
  }
  console.error(`[${scenario}] the server's last ${serverLog.length} log lines:`);
  for (const line of serverLog) console.error(`  ${line}`);
}
const room = `room-${scenario}-${Date.now()}`;

// `relay`: "udp" | "tcp" | "tls": only that TURN URL of the join info, and
// relay candidates only.
async function openPage(name, colour, { codec, roomId = room, relay, simulcast, size, publish, permissions, busy } = {}) {
  const res = await fetch(`${sb.base}/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ room: roomId, userId: name, permissions }),
  });
  check(res.ok, `dev token for ${name}: ${res.status}`);
  const { token, iceServers = [] } = await res.json();
  let rtcConfig = {};
  if (relay) {
    const wanted = { udp: (u) => u.startsWith("turn:") && u.endsWith("transport=udp"),
                     tcp: (u) => u.startsWith("turn:") && u.endsWith("transport=tcp"),
                     tls: (u) => u.startsWith("turns:") }[relay];
    const servers = iceServers.map((s) => ({ ...s, urls: s.urls.filter(wanted) })).filter((s) => s.urls.length);
    check(servers.length === 1, `join info has a ${relay} TURN URL: ${JSON.stringify(iceServers)}`);
    rtcConfig = { iceServers: servers, iceTransportPolicy: "relay" };
  }
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => log(`${name} page error:`, e.message));
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") log(`${name} console:`, m.text()); });
  await page.goto(`${web.base}/page.html`);
  const pid = await page.evaluate((o) => window.sb.start(o), { url: sb.ws, token, colour, codec, rtcConfig, simulcast, size, publish, busy });
  const handle = { name, colour, page, pid, context };
  opened.push(handle);
  return handle;
}

async function seesColours(viewer, others) {
  const seen = await viewer.page.evaluate(() => window.sb.coloursSeen());
  return others.every((o) => seen[o.pid] === o.colour) ? seen : false;
}

async function allSeeEachOther(pages, timeoutMs = 30000) {
  for (const p of pages) {
    const others = pages.filter((o) => o !== p);
    await waitFor(`${p.name} to see ${others.map((o) => o.colour).join(", ")}`, () => seesColours(p, others), timeoutMs);
  }
}

const inbound = (p) => p.page.evaluate(() => window.sb.inbound());
const sum = (xs, f) => xs.reduce((s, x) => s + f(x), 0);

async function framesFrom(viewer, from) {
  return viewer.page.evaluate(async (pid) => {
    const entry = [...window.client.remote.values()].find((e) => e.participantId === pid && e.kind === "video");
    if (!entry) return -1;
    const stats = await window.client.sub.getStats();
    let frames = -1;
    stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video" && s.mid === entry.mid) frames = s.framesDecoded || 0; });
    return frames;
  }, from.pid);
}

// ---- scenarios -------------------------------------------------------------

async function twoPages(codec) {
  const a = await openPage("alice", "red", { codec });
  const b = await openPage("bob", "green", { codec });
  await allSeeEachOther([a, b]);
  // Steady state only: the first second's audio is concealed while the
  // jitter buffer fills (seen once at 11 % of a window that began at once).
  await sleep(1000);
  for (const p of [a, b]) {
    const before = await inbound(p);
    await sleep(5000);
    const after = await inbound(p);
    const frames = sum(after.video, (v) => v.framesDecoded) - sum(before.video, (v) => v.framesDecoded);
    const samples = sum(after.audio, (x) => x.totalSamplesReceived) - sum(before.audio, (x) => x.totalSamplesReceived);
    const concealed = sum(after.audio, (x) => x.concealedSamples) - sum(before.audio, (x) => x.concealedSamples);
    const ratio = samples > 0 ? concealed / samples : 1;
    const codecs = after.video.map((v) => v.codec);
    const sent = await p.page.evaluate(() => window.sb.outboundCodec());
    log(JSON.stringify({ page: p.name, framesIn5s: frames, audioSamplesIn5s: samples, concealmentRatio: ratio, inboundCodecs: codecs, outboundCodec: sent }));
    check(frames > 25, `${p.name} decoded only ${frames} frames in 5 s`);
    check(samples > 48000 * 4, `${p.name} received only ${samples} audio samples in 5 s`);
    check(ratio < 0.05, `${p.name} concealment ratio ${ratio}`);
    check(codecs.length === 1 && codecs[0] === `video/${codec}`, `${p.name} decodes ${codecs}, wanted video/${codec}`);
    check(sent === `video/${codec}`, `${p.name} sends ${sent}, wanted video/${codec}`);
  }
  // 1:1: each receiver's own estimate (Chromium's REMB, as the subscriber
  // connections offer no transport-wide feedback) reaches the sender.
  const relayed = await metric("switchboard_remb_relayed_total");
  log(JSON.stringify({ rembRelayed: relayed }));
  check(relayed > 0, "no receiver's REMB was relayed to a sender");
  // The server kept both subscriber connections' SRTP keys (the own
  // egress, issue 21, will encrypt with them), whatever profile Chromium
  // and str0m agreed.
  const keys = {};
  for (const profile of ["aes128_cm_sha1_80", "aead_aes_128_gcm", "aead_aes_256_gcm", "none"]) {
    keys[profile] = await metric(`switchboard_srtp_keys_captured_total{profile="${profile}"}`);
  }
  log(JSON.stringify({ srtpKeysCaptured: keys }));
  check(keys.none === 0 && keys.aes128_cm_sha1_80 + keys.aead_aes_128_gcm + keys.aead_aes_256_gcm >= 2, "both subscriber connections' SRTP keys captured");
}

/**
 * The own SRTP egress (issue 21) carrying a 1:1 call: our sender reports
 * reach Chromium (remote-outbound-rtp, timestamps near now) and keep audio
 * and video in sync; with loss on the way to the pages their NACKs are
 * answered from the server's ring and video keeps decoding; an ICE
 * restart moves the subscriber connection's pair and the egress follows.
 */
async function ownEgress() {
  check(process.env.SWITCHBOARD_TEST_NETNS === "1", "own-egress drops datagrams with iptables: it runs only in its own network namespace");
  const a = await openPage("alice", "red", { codec: "VP8" });
  const b = await openPage("bob", "green", { codec: "VP8" });
  await allSeeEachOther([a, b]);
  // The publishers' audio reports come every 5 s; ours follow them.
  await sleep(6000);
  for (const p of [a, b]) {
    const s = await p.page.evaluate(() => window.sb.ownPath());
    log(JSON.stringify({ page: p.name, ownPath: s }));
    for (const kind of ["audio", "video"]) {
      const remote = s.remote[kind];
      check(remote && remote.reportsSent > 0, `${p.name}: no sender report for ${kind}`);
      check(Math.abs(remote.remoteTimestamp - Date.now()) < 10000, `${p.name}: ${kind} report's time ${remote.remoteTimestamp} is not near now`);
      check(s[kind].estimatedPlayoutTimestamp, `${p.name}: no ${kind} playout timestamp`);
    }
    const skew = Math.abs(s.audio.estimatedPlayoutTimestamp - s.video.estimatedPlayoutTimestamp);
    log(JSON.stringify({ page: p.name, playoutSkewMs: skew }));
    check(skew < 80, `${p.name}: audio and video playout ${skew} ms apart`);
  }
  const sent = await metric('switchboard_own_egress_packets_total{kind="rtp"}');
  check(sent > 500, `the own egress sent ${sent} packets`);

  // One in 10 datagrams from the server's media port is lost.
  const rule = ["OUTPUT", "-p", "udp", "--sport", String(sb.udpPort), "-m", "statistic", "--mode", "nth", "--every", "10", "--packet", "0", "-j", "DROP"];
  execFileSync("iptables", ["-A", ...rule]);
  const before = await Promise.all([a, b].map((p) => p.page.evaluate(() => window.sb.ownPath())));
  try {
    await sleep(5000);
  } finally {
    execFileSync("iptables", ["-D", ...rule]);
  }
  for (const [i, p] of [a, b].entries()) {
    const after = await p.page.evaluate(() => window.sb.ownPath());
    const nacks = after.video.nackCount - before[i].video.nackCount;
    const frames = after.video.framesDecoded - before[i].video.framesDecoded;
    log(JSON.stringify({ page: p.name, lossy: { nacksSent: nacks, framesDecoded: frames, packetsLost: after.video.packetsLost } }));
    check(nacks > 0, `${p.name} sent no NACK under loss`);
    check(frames > 25, `${p.name} decoded only ${frames} frames in 5 s under loss`);
  }
  const resent = await metric('switchboard_own_egress_packets_total{kind="resent"}');
  log(JSON.stringify({ resent }));
  check(resent > 0, "no NACKed packet was sent again");

  // The server restarts ICE on each subscriber connection: Chromium
  // gathers new ports, so the pair (and the egress's destination) moves.
  const ports = await Promise.all([a, b].map(async (p) => (await p.page.evaluate(() => window.sb.ownPath())).localPort));
  for (const p of [a, b]) await p.page.evaluate(() => window.client.send({ type: "restartIce" }));
  for (const [i, p] of [a, b].entries()) {
    await waitFor(`${p.name}'s subscriber pair to move`, async () => (await p.page.evaluate(() => window.sb.ownPath())).localPort !== ports[i], 20000);
    const before = await p.page.evaluate(() => window.sb.ownPath());
    await sleep(3000);
    const after = await p.page.evaluate(() => window.sb.ownPath());
    const frames = after.video.framesDecoded - before.video.framesDecoded;
    log(JSON.stringify({ page: p.name, afterIceRestart: { from: ports[i], to: after.localPort, framesIn3s: frames } }));
    check(frames > 15, `${p.name} decoded only ${frames} frames in 3 s after the ICE restart`);
  }

  // Chromium took every packet we sealed: libsrtp's verdicts in its WebRTC
  // log (the renderers' included) name no failed authentication, no index
  // out of the window, nothing but duplicates (err=9, replay_fail): a
  // retransmission is the packet as first sent (same SSRC and index, not
  // RTX), so when the first copy arrived after all (Chromium asked again
  // before it came) the second is dropped as a replay. Only resent packets
  // can arrive twice: the egress never seals an index twice. libwebrtc logs
  // a session's first failure, then every 100th: each session's first is
  // what this sees.
  const verdicts = () => readFileSync(CHROMIUM_LOG, "utf8").split("\n")
    .map((l) => /Failed to unprotect SRTC?P packet, err=(\d+)/.exec(l)).filter(Boolean).map((m) => Number(m[1]));
  const replays = verdicts().filter((err) => err === 9).length;
  const failures = verdicts().filter((err) => err !== 9);
  log(JSON.stringify({ unprotectFailures: failures, duplicatesDropped: replays, resent }));
  check(failures.length === 0, `Chromium could not unprotect our packets: libsrtp errors ${failures.join(", ")}`);
  check(replays <= resent, `${replays} duplicate SRTP indexes but only ${resent} packets resent`);
  // The check can fail: one RTP-shaped datagram with a wrong tag, sent
  // from the server's media port to alice's selected port (a raw socket
  // spoofs the source), is logged as a failure. Her publisher connection:
  // it receives no RTP, so its session has no earlier (throttled) failure.
  const alicePort = await a.page.evaluate(() => window.sb.publisherPort());
  spoofRtp(sb.udpPort, alicePort);
  const authFailed = 7; // libsrtp's srtp_err_status_auth_fail
  await waitFor("Chromium to log the forged packet's failed authentication", async () => verdicts().includes(authFailed), 5000);
}

/** Sends one RTP-shaped datagram (garbage tag) from 127.0.0.1:`fromPort` to 127.0.0.1:`toPort`. */
function spoofRtp(fromPort, toPort) {
  const script = [
    "import socket, struct, sys",
    "src, dst = int(sys.argv[1]), int(sys.argv[2])",
    "rtp = bytes([0x80, 96]) + struct.pack('!HII', 7, 0, 0x5b5b5b5b) + bytes(60)",
    "udp = struct.pack('!HHHH', src, dst, 8 + len(rtp), 0) + rtp",
    "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).sendto(udp, ('127.0.0.1', 0))",
  ].join("\n");
  execFileSync("python3", ["-c", script, String(fromPort), String(toPort)]);
}

/**
 * 1:1 adapts without a server-side estimator (issue 21 part 2): the
 * subscriber connection offers no transport-wide feedback, so Chromium
 * estimates its downlink from abs-send-time (stamped by our egress) and
 * sends REMB, which the server relays to the other side's publisher. With
 * bob's downlink shaped, alice's encoder target falls under the shaped
 * rate; a third member (a group: the cap bob's REMB set is lifted) and
 * alice's estimate is above it again; a pair again, under it; freed, it
 * climbs back.
 */
async function rembDownlink() {
  check(process.env.SWITCHBOARD_TEST_NETNS === "1", "remb-downlink shapes loopback: it runs only in its own network namespace");
  // Moving pictures: a still canvas needs so few bits that the estimate
  // never climbs (a receive-side estimator sees only what arrives).
  const a = await openPage("alice", "red", { codec: "VP8", busy: true });
  const b = await openPage("bob", "green", { codec: "VP8", busy: true });
  await allSeeEachOther([a, b]);
  const target = () => a.page.evaluate(() => window.sb.targetBitrate());
  await sleep(5000);
  const free = await target();
  const port = (await b.page.evaluate(() => window.sb.ownPath())).localPort;
  const tc = (...args) => execFileSync("tc", args);
  const shapedKbps = 250;
  tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10", "r2q", "1000");
  tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit");
  tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", `${shapedKbps}kbit`, "ceil", `${shapedKbps}kbit`);
  tc("qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "bfifo", "limit", "30000");
  tc("filter", "add", "dev", "lo", "protocol", "ip", "parent", "1:", "prio", "1", "u32", "match", "ip", "dport", String(port), "0xffff", "flowid", "1:20");
  const shapedAt = Date.now();
  let lowest = free;
  try {
    await waitFor("alice's target under bob's shaped downlink", async () => (lowest = Math.min(lowest, await target())) < shapedKbps * 1000, 30000);
  } finally {
    log(JSON.stringify({ targetBitrateFree: free, targetBitrateShapedLowest: lowest, downMs: Date.now() - shapedAt }));
  }
  // A third member makes the call a group, where no single receiver speaks
  // for alice: libwebrtc keeps the latest REMB as an upper bound until
  // another arrives, so the server lifts bob's (a REMB of 0, "no limit")
  // and alice's estimate goes above bob's shaped rate again. Without the
  // lift it stays under it for the rest of the call.
  const estimate = () => a.page.evaluate(() => window.sb.availableOutgoingBitrate());
  const capped = await estimate();
  const carol = await openPage("carol", "blue", { publish: false });
  await waitFor("carol to see alice", () => seesColours(carol, [a]), 30000);
  const groupAt = Date.now();
  let uncapped = capped;
  try {
    await waitFor("alice's estimate above bob's shaped rate in the group", async () => (uncapped = await estimate()) > 2 * shapedKbps * 1000, 30000);
  } finally {
    log(JSON.stringify({ estimateCappedByBob: capped, estimateInTheGroup: uncapped, liftedMs: Date.now() - groupAt }));
  }
  // A pair again: bob's REMB speaks for alice again.
  await carol.page.evaluate(() => window.sb.leave());
  await waitFor("alice's estimate back under bob's shaped rate", async () => (await estimate()) < shapedKbps * 1000, 30000);
  tc("class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit");
  const freedAt = Date.now();
  // Chromium's receive-side estimate climbs some 8 % a second once free,
  // after the shaper's queue has drained (which it first reads as more
  // congestion), and without probes: climbing is the check here, a third
  // above the lowest it fell to after the shaper was lifted. How long it
  // takes to get back above the shaped rate is BENCHMARKS.md's figure.
  let lowestFreed = lowest;
  let current = lowest;
  try {
    await waitFor("alice's target climbing once freed", async () => {
      current = await target();
      lowestFreed = Math.min(lowestFreed, current);
      return current > (4 / 3) * lowestFreed;
    }, 45000);
  } finally {
    log(JSON.stringify({ targetBitrateLowestFreed: lowestFreed, targetBitrateClimbedTo: current, upMs: Date.now() - freedAt }));
  }
  const relayed = await metric("switchboard_remb_relayed_total");
  check(relayed > 0, "no REMB was relayed");
}

async function metric(name) {
  const text = await (await fetch(`${sb.base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

async function fourThenLate() {
  const colours = ["red", "green", "blue", "yellow"];
  const pages = [];
  for (const [i, c] of colours.entries()) pages.push(await openPage(`user${i}`, c));
  await allSeeEachOther(pages, 45000);
  const late = await openPage("late", "magenta");
  try {
    await waitFor("the late joiner to see all four", () => seesColours(late, pages), 30000);
  } finally {
    log(JSON.stringify({ lateJoinerTimeline: await late.page.evaluate(() => window.client.timeline), inbound: await inbound(late) }));
  }
  for (const p of pages) await waitFor(`${p.name} to see the late joiner`, () => seesColours(p, [late]), 20000);
  const ttff = await late.page.evaluate(() => window.sb.firstFrameMs());
  log(JSON.stringify({ lateJoinerTimeline: await late.page.evaluate(() => window.client.timeline) }));
  const values = Object.values(ttff).filter((v) => v !== null);
  log(JSON.stringify({ lateJoinerTimeToFirstFrameMs: ttff, max: Math.max(...values) }));
  // Renegotiations each page's subscriber connection went through (every
  // subscriberOffer, the first data-channel-only one included).
  const offers = {};
  for (const p of [...pages, late]) {
    offers[p.name] = (await p.page.evaluate(() => window.client.timeline)).filter(([what]) => what === "subscriberOffer").length;
  }
  log(JSON.stringify({ subscriberOffers: offers }));
  check(values.length === 4, `late joiner has first frames from ${values.length} of 4`);
}

async function leaveAndKill() {
  const a = await openPage("leaver", "red");
  const b = await openPage("stayer", "green");
  const c = await openPage("crasher", "blue");
  await allSeeEachOther([a, b, c]);
  // A leaves: the others lose its track at once.
  const t0 = Date.now();
  await a.page.evaluate(() => window.sb.leave());
  await waitFor("the leaver's video to be removed", async () => {
    const rb = await b.page.evaluate(() => window.sb.remoteParticipants());
    const rc = await c.page.evaluate(() => window.sb.remoteParticipants());
    return !rb.includes(a.pid) && !rc.includes(a.pid);
  }, 5000);
  log(JSON.stringify({ leaveRemovedAfterMs: Date.now() - t0 }));
  // C's renderer crashes: no leave, no goodbye. B sees it reconnecting, then gone after the grace period.
  const cdp = await c.context.newCDPSession(c.page);
  const t1 = Date.now();
  // Not awaited: the crashed renderer never answers.
  cdp.send("Page.crash").catch(() => {});
  await waitFor("the crashed page to be removed", async () => {
    const l = await b.page.evaluate(() => window.client.log);
    return l.filter((t) => t === "participantLeft").length >= 2;
  }, (GRACE_SECONDS + 30) * 1000);
  const removedAfter = Date.now() - t1;
  const events = await b.page.evaluate(() => window.client.log);
  log(JSON.stringify({ crashRemovedAfterMs: removedAfter, graceSeconds: GRACE_SECONDS }));
  check(events.includes("participantStateChanged"), "the stayer never saw the crasher reconnecting");
  check(removedAfter >= GRACE_SECONDS * 1000 - 500, `removed after ${removedAfter} ms, before the grace period`);
  const remaining = await b.page.evaluate(() => window.sb.remoteParticipants());
  check(remaining.length === 0, `the stayer still shows ${remaining}`);
}

// Samples `viewer`'s decoded frames from `from` while `during` runs; fails on
// any 1.5 s window without a new frame.
// How long `from`'s video stalled at `viewer` while `during` ran, sampled
// inside the viewer's page every 100 ms (page timers, not CDP round trips:
// with three pages on two cores a round trip alone can take a second).
// `packetsGapMs`: the longest time no RTP packet of the stream arrived,
// which is what the server controls; `decodedGapMs`: the longest time no
// frame was decoded, which is what the user sees.
async function noFreeze(viewer, from, during) {
  await viewer.page.evaluate((pid) => {
    window.continuity = [];
    window.continuityTimer = setInterval(async () => {
      const entry = [...window.client.remote.values()].find((e) => e.participantId === pid && e.kind === "video");
      if (!entry) return;
      const stats = await window.client.sub.getStats();
      stats.forEach((s) => {
        // [sampled at, packets, frames decoded, ms since the last packet
        // arrived by Chromium's own receive clock (a late sample does not
        // make a gap out of packets that kept arriving)].
        if (s.type === "inbound-rtp" && s.kind === "video" && s.mid === entry.mid)
          window.continuity.push([performance.now(), s.packetsReceived || 0, s.framesDecoded || 0, s.timestamp - (s.lastPacketReceivedTimestamp ?? s.timestamp)]);
      });
    }, 100);
  }, from.pid);
  await during();
  await sleep(2000);
  const samples = await viewer.page.evaluate(() => {
    clearInterval(window.continuityTimer);
    return window.continuity;
  });
  check(samples.length > 20, `only ${samples.length} continuity samples`);
  const longestStall = (column) => {
    let lastChange = samples[0][0];
    let worst = 0;
    for (let i = 1; i < samples.length; i++) {
      if (samples[i][column] > samples[i - 1][column]) {
        worst = Math.max(worst, samples[i][0] - lastChange);
        lastChange = samples[i][0];
      }
    }
    return Math.round(Math.max(worst, samples[samples.length - 1][0] - lastChange));
  };
  let samplerGap = 0;
  for (let i = 1; i < samples.length; i++) samplerGap = Math.max(samplerGap, samples[i][0] - samples[i - 1][0]);
  return {
    // The longest time without a new packet as Chromium's receive clock
    // saw it, at any sample (at most one 100 ms sampling period short).
    packetsGapMs: Math.round(Math.max(...samples.map((s) => s[3]))),
    // Between samples in which the counts moved: a page too busy to sample
    // makes these long too, hence samplerGapMs beside them.
    packetCountGapMs: longestStall(1),
    decodedGapMs: longestStall(2),
    samplerGapMs: Math.round(samplerGap),
    frames: samples[samples.length - 1][2] - samples[0][2],
  };
}

// A histogram's buckets so far, summed over the series whose labels
// contain `match`: per upper bound (seconds, "+Inf" last), how many
// observations were at most that.
async function buckets(name, match = "") {
  const text = await (await fetch(`${sb.base}/metrics`)).text();
  const counts = new Map();
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}_bucket{`)) continue;
    const [labels, n] = [line.slice(line.indexOf("{") + 1, line.lastIndexOf("}")), line.split(" ").at(-1)];
    if (!labels.includes(match)) continue;
    const le = labels.match(/le="([^"]+)"/)[1];
    counts.set(le, (counts.get(le) ?? 0) + Number(n));
  }
  return counts;
}

// Of the observations between two `buckets()` readings: how many, and the
// smallest bucket bound that holds the longest of them in ms (`floorMs`,
// the histogram's threshold, when there were none; Infinity past the last
// bound).
function longest(before, after, floorMs) {
  const count = (after.get("+Inf") ?? 0) - (before.get("+Inf") ?? 0);
  if (count === 0) return { count, atMostMs: floorMs };
  for (const [le, n] of after) {
    if (le !== "+Inf" && n - (before.get(le) ?? 0) === count) return { count, atMostMs: Number(le) * 1000 };
  }
  return { count, atMostMs: Infinity };
}

const STEPS = "switchboard_engine_slow_steps_seconds";
const STEPS_CPU = "switchboard_engine_slow_step_cpu_seconds";

async function twoThreeTwo() {
  const a = await openPage("a", "red");
  const b = await openPage("b", "green");
  await allSeeEachOther([a, b]);
  const [stepsBefore, cpuBefore] = [await buckets(STEPS), await buckets(STEPS_CPU)];
  const gapsBefore = streamGaps.length;
  let c;
  const result = await noFreeze(b, a, async () => {
    await sleep(1500);
    c = await openPage("c", "blue");
    await allSeeEachOther([a, b, c]);
    await sleep(1500);
    await c.page.evaluate(() => window.sb.leave());
    await waitFor("c to be gone", async () => !(await b.page.evaluate(() => window.sb.remoteParticipants())).includes(c.pid), 5000);
  });
  // The server's view, apart from the page's: the longest engine step
  // (nothing on the shard is forwarded while one runs) and the longest
  // pause in a's video as the engine received it (a's page, its network
  // or an unscheduled shard thread: not the forwarding).
  await sleep(300); // the shard reports gaps every 100 ms
  const steps = longest(stepsBefore, await buckets(STEPS), 5);
  const cpu = longest(cpuBefore, await buckets(STEPS_CPU), 5);
  // Gaps under 250 ms are not logged: counted as none.
  const received = Math.max(0, ...streamGaps.slice(gapsBefore).filter((g) => g.participant === a.pid && g.kind === "video").map((g) => g.gapMs));
  log(JSON.stringify({ ...result, slowSteps: steps.count, longestStepAtMostMs: steps.atMostMs, longestStepCpuAtMostMs: cpu.atMostMs, aVideoGapAtServerMs: received }));
  check(result.frames > 50, `only ${result.frames} frames from a during 2->3->2`);
  // Strict, the engine's own work: renegotiating b's subscriber connection
  // twice (joins, publishes, answers, timers) never holds the shard's CPU
  // for a quarter second.
  check(cpu.atMostMs <= 250, `an engine step worked for up to ${cpu.atMostMs} ms of CPU`);
  // In wall time a busy machine preempts the shard (up to ~0.8 s seen with
  // one core busy): headroom, and a step past the last bucket fails.
  check(steps.atMostMs <= 2500, `an engine step blocked forwarding for over ${steps.atMostMs} ms`);
  // What the path after the server added to a's stream at b: the page's
  // gap beyond what the server itself received (with headroom for a busy
  // machine's preemption of the shard, the network stack and the page).
  check(result.packetsGapMs - received < 1500, `a's packets stopped reaching b for ${result.packetsGapMs} ms (the server received a's video with gaps of at most ${received} ms)`);
  check(result.decodedGapMs - received < 2000, `a's video froze for ${result.decodedGapMs} ms at b (the server received a's video with gaps of at most ${received} ms)`);
  await allSeeEachOther([a, b]);
}

async function garbageFlood() {
  const a = await openPage("a", "red");
  const b = await openPage("b", "green");
  await allSeeEachOther([a, b]);
  const socket = createSocket("udp4");
  let sent = 0;
  const stopAt = Date.now() + 6000;
  const flood = (async () => {
    while (Date.now() < stopAt && sent < 200000) {
      for (let i = 0; i < 200; i++, sent++) {
        const buf = Buffer.alloc(1 + ((sent * 37) % 1100));
        for (let j = 0; j < buf.length; j++) buf[j] = (j * 31 + sent) & 0xff;
        socket.send(buf, sb.udpPort, "127.0.0.1");
      }
      await sleep(5);
    }
  })();
  const before = await framesFrom(b, a);
  await sleep(5000);
  const after = await framesFrom(b, a);
  await flood;
  socket.close();
  log(JSON.stringify({ garbageDatagrams: sent, framesDuringFlood: after - before }));
  check(sent > 10000, `only ${sent} garbage datagrams sent`);
  check(after - before > 25, `b decoded ${after - before} frames from a during the flood`);
  await allSeeEachOther([a, b]);
  const metrics = await (await fetch(`${sb.base}/metrics`)).text();
  const dropped = metrics.split("\n").filter((l) => l.startsWith("switchboard_udp_dropped_total"));
  log(dropped.join(" "));
}

// Two pages that may only use our TURN relay over `protocol`.
// ICE over TCP. With UDP open, pages pick it over the node's TCP
// candidate (lower priority). Then UDP to the node's media port is dropped
// in this test's network namespace, and with no TURN server offered the
// only way in is the passive TCP candidate: two new pages connect over it
// (the selected pair's local candidate is TCP) and decode each other's
// video.
async function iceTcp() {
  check(process.env.SWITCHBOARD_TEST_NETNS === "1", "ice-tcp drops UDP with iptables: it runs only in its own network namespace");
  const u1 = await openPage("udp1", "blue", { roomId: `${room}-udp` });
  const u2 = await openPage("udp2", "yellow", { roomId: `${room}-udp` });
  await allSeeEachOther([u1, u2], 30000);
  for (const p of [u1, u2]) {
    const selected = await p.page.evaluate(() => window.sb.selectedCandidates());
    log(JSON.stringify({ page: p.name, selected }));
    for (const [pc, local] of Object.entries(selected)) check(local?.protocol === "udp", `${p.name} ${pc} did not prefer UDP: ${JSON.stringify(local)}`);
  }
  execFileSync("iptables", ["-A", "OUTPUT", "-p", "udp", "--dport", String(sb.udpPort), "-j", "DROP"]);
  const a = await openPage("alice", "red");
  const b = await openPage("bob", "green");
  await allSeeEachOther([a, b], 30000);
  for (const p of [a, b]) {
    const selected = await p.page.evaluate(() => window.sb.selectedCandidates());
    const before = await framesFrom(p, p === a ? b : a);
    await sleep(2000);
    const after = await framesFrom(p, p === a ? b : a);
    log(JSON.stringify({ page: p.name, selected, framesIn2s: after - before }));
    for (const [pc, local] of Object.entries(selected)) {
      // Chromium's side of an active TCP connection is peer-reflexive (its
      // port is the connection's); relayed would mean TURN.
      check(local && local.candidateType !== "relay" && local.protocol === "tcp", `${p.name} ${pc} is not direct over TCP: ${JSON.stringify(local)}`);
    }
    check(after - before > 10, `${p.name} decoded ${after - before} frames in 2 s over TCP`);
  }
  const metrics = await (await fetch(`${sb.base}/metrics`)).text();
  const open = Number(metrics.match(/^switchboard_ice_tcp_connections (\d+)/m)?.[1]);
  check(open >= 4, `ICE/TCP connections open: ${open} (at least two pages with two connections each)`);
}

async function relayOnly(protocol, { trusted = true } = {}) {
  const a = await openPage("alice", "red", { relay: protocol });
  const b = await openPage("bob", "green", { relay: protocol });
  if (!trusted) {
    // Chromium refuses the self-signed certificate: no relay candidate, no media.
    let seen = false;
    try {
      await allSeeEachOther([a, b], 10000);
      seen = true;
    } catch (e) {
      log(`as expected, no media: ${e.message.split("\n")[0]}`);
    }
    const selected = await a.page.evaluate(() => window.sb.selectedCandidates());
    log(JSON.stringify({ page: "alice", selected }));
    check(!seen, "media flowed through a TURN server whose certificate is not trusted");
    return;
  }
  await allSeeEachOther([a, b], 30000);
  for (const p of [a, b]) {
    const selected = await p.page.evaluate(() => window.sb.selectedCandidates());
    const before = await framesFrom(p, p === a ? b : a);
    await sleep(3000);
    const after = await framesFrom(p, p === a ? b : a);
    log(JSON.stringify({ page: p.name, selected, framesIn3s: after - before }));
    for (const [pc, local] of Object.entries(selected)) {
      check(local && local.candidateType === "relay", `${p.name} ${pc} is not relayed: ${JSON.stringify(local)}`);
      check(local.relayProtocol === protocol, `${p.name} ${pc} relays over ${local.relayProtocol}, wanted ${protocol}`);
    }
    check(after - before > 15, `${p.name} decoded ${after - before} frames in 3 s through the relay`);
  }
  const metrics = await (await fetch(`${sb.base}/metrics`)).text();
  log(metrics.split("\n").filter((l) => l.startsWith("switchboard_turn_")).join(" "));
}

// ---- the demo page (native/capacitor), served by switchboard in dev mode ---

const DEMO_DIR = join(here, "../../../native/capacitor");

async function openDemo(user, base = sb.base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => log(`${user} page error:`, e.message));
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") log(`${user} console:`, m.text()); });
  await page.goto(`${base}/demo/`);
  await page.fill("#user", user);
  await page.click("#signin");
  await waitFor(`${user} signed in`, () => statusOf({ page }).then((s) => s === "ready"), 15000);
  return { user, page, context };
}

const statusOf = (p) => p.page.textContent("#status");
const untilStatus = (p, wanted, timeoutMs = 20000) =>
  waitFor(`${p.user} status "${wanted}"`, async () => ((await statusOf(p)) === wanted ? wanted : false), timeoutMs);
const remoteFrames = (p) => p.page.evaluate(() => document.getElementById("remote").getVideoPlaybackQuality().totalVideoFrames);

// Each demo page decodes the other's video: frame counts rise.
async function decodeEachOther(alice, bob) {
  for (const [viewer, from] of [[alice, bob], [bob, alice]]) {
    const first = await waitFor(`${viewer.user} decoding ${from.user}'s video`, async () => (await remoteFrames(viewer)) > 0 && remoteFrames(viewer));
    await sleep(2000);
    const later = await remoteFrames(viewer);
    log(`${viewer.user} decoded ${first} then ${later} frames of ${from.user}'s video`);
    check(later > first + 10, `${viewer.user}'s frames rise (${first} -> ${later})`);
  }
}

// Alice calls Bob from the demo page; Bob sees the incoming call.
async function demoRing() {
  const alice = await openDemo("alice");
  const bob = await openDemo("bob");
  await alice.page.fill("#callee", "bob");
  await alice.page.click("#call");
  await untilStatus(alice, "outgoing");
  await waitFor("bob's incoming call", () => bob.page.isVisible("#incoming"));
  check((await bob.page.textContent("#caller")) === "alice", "the incoming call names alice");
  return { alice, bob };
}

async function demoCall() {
  const { alice, bob } = await demoRing();
  // The web client's activeSpeakers events (the fake microphones beep).
  await bob.page.evaluate(() => {
    window.speakerEvents = [];
    window.switchboard.on("activeSpeakers", (e) => window.speakerEvents.push(e));
  });
  const answeredAt = Date.now();
  await bob.page.click("#answer");
  await untilStatus(bob, "connected");
  await untilStatus(alice, "connected");
  await decodeEachOther(alice, bob);
  // Both pages reported their time to first audio (bob's from his click,
  // alice's from hearing the answer): each lies between the click and now.
  const ttfa = (part) => metric(`switchboard_call_time_to_first_audio_seconds_${part}{platform="web"}`);
  const firstVideos = () => metric('switchboard_call_time_to_first_video_seconds_count{platform="web"}');
  // Each report is its own request, sent when the page's next stats read
  // (every 250 ms) sees the frame: wait for all four.
  await waitFor("both pages' first-audio and first-video reports", async () => (await ttfa("count")) === 2 && (await firstVideos()) === 2);
  const sinceClick = (Date.now() - answeredAt) / 1000;
  const ttfaSum = await ttfa("sum");
  log(JSON.stringify({ ttfaSum, sinceClick }));
  check(ttfaSum > 0 && ttfaSum <= 2 * sinceClick, `TTFA ${ttfaSum} s summed over two pages, ${sinceClick} s since the click`);
  // The extended plugin API on the web: the calls a late UI would list,
  // whose track it is, hold (nothing sent, the user's mute kept), routes.
  const active = async (who) => who.page.evaluate(async () => (await window.switchboard.getActiveCalls()).calls);
  const [bobsCall] = await active(bob);
  const [alicesCall] = await active(alice);
  check(
    bobsCall?.state === "connected" && bobsCall.remoteUserId === "alice" && !bobsCall.outgoing,
    `bob's active call is alice's incoming call (${JSON.stringify(bobsCall)})`,
  );
  check(
    alicesCall?.callId === bobsCall.callId && alicesCall.remoteUserId === "bob" && alicesCall.outgoing,
    `alice's active call is the same call, outgoing to bob (${JSON.stringify(alicesCall)})`,
  );
  check((await bob.page.getAttribute("#remote", "data-user-id")) === "alice", "bob's remote video is alice's");
  const sending = () =>
    alice.page.evaluate(() => window.switchboard.localStream.getTracks().map((t) => `${t.kind}:${t.enabled}`).sort().join(","));
  const callId = alicesCall.callId;
  await alice.page.evaluate((callId) => window.switchboard.setMuted({ callId, muted: true }), callId);
  await alice.page.evaluate((callId) => window.switchboard.setHeld({ callId, held: true }), callId);
  check((await sending()) === "audio:false,video:false", `held sends nothing (${await sending()})`);
  await alice.page.evaluate((callId) => window.switchboard.setHeld({ callId, held: false }), callId);
  check((await sending()) === "audio:false,video:true", `unhold keeps the user's mute (${await sending()})`);
  const [held] = await active(alice);
  check(held.muted && !held.held, `the active call remembers mute, not hold (${JSON.stringify(held)})`);
  // A video view at a frame the app gives: alice's video plays in it.
  const trackId = await bob.page.getAttribute("#remote", "data-track-id");
  const frame = { x: 8, y: 8, width: 160, height: 120 };
  await bob.page.evaluate(([callId, trackId, frame]) => window.switchboard.showVideo({ callId, trackId, frame }), [
    bobsCall.callId,
    trackId,
    frame,
  ]);
  const viewFrames = () =>
    bob.page.evaluate(() => {
      const view = document.querySelector("video[data-switchboard-view]");
      return view ? view.getVideoPlaybackQuality().totalVideoFrames : -1;
    });
  const shown = await waitFor("bob's video view decoding", async () => (await viewFrames()) > 0 && viewFrames());
  await sleep(1000);
  const box = await bob.page.evaluate(() => {
    const r = document.querySelector("video[data-switchboard-view]").getBoundingClientRect();
    return [r.x, r.y, r.width, r.height];
  });
  check(JSON.stringify(box) === JSON.stringify([8, 8, 160, 120]), `the view is at its frame (${box})`);
  check((await viewFrames()) > shown, `the view's frames rise (${shown} -> ${await viewFrames()})`);
  const missing = await bob.page.evaluate(
    (callId) => window.switchboard.showVideo({ callId, trackId: "TR_none", frame: { x: 0, y: 0, width: 1, height: 1 } }).then(() => "shown", (e) => e.code),
    bobsCall.callId,
  );
  check(missing === "track_not_found", `an unknown track has no view (${missing})`);
  await bob.page.evaluate(([callId, trackId]) => window.switchboard.hideVideo({ callId, trackId }), [bobsCall.callId, trackId]);
  check((await viewFrames()) === -1, "hideVideo removes the view");
  // Data channels through the web client (the demo's calls allow them):
  // bob's message reaches alice's dataReceived with his ids; an oversize
  // one is refused before it is sent.
  await alice.page.evaluate(() => {
    window.dataEvents = [];
    window.switchboard.on("dataReceived", (e) => window.dataEvents.push(e));
  });
  await bob.page.evaluate((callId) => window.switchboard.sendData({ callId, payload: "hi alice" }), bobsCall.callId);
  const got = await waitFor("alice's dataReceived", async () => (await alice.page.evaluate(() => window.dataEvents))[0], 10000);
  check(
    got.callId === callId && got.userId === "bob" && got.payload === "hi alice" && got.reliable && typeof got.from === "string" && got.from !== "",
    `alice got bob's message with his ids (${JSON.stringify(got)})`,
  );
  const oversize = await bob.page.evaluate(
    (callId) => window.switchboard.sendData({ callId, payload: "x".repeat(16385) }).then(() => "sent", (e) => e.code),
    bobsCall.callId,
  );
  check(oversize === "message_too_large", `an oversize message is refused (${oversize})`);
  const route = await alice.page.evaluate(() =>
    window.switchboard.selectAudioRoute({ id: "speaker" }).then(() => "selected", (e) => e.code),
  );
  check(route === "unknown_route", `a browser has no audio routes to select (${route})`);
  await alice.page.click("#hangup");
  await untilStatus(alice, "ended: completed");
  await untilStatus(bob, "ended: completed");
  check(!(await bob.page.isVisible("#hangup")), "bob's call controls are gone");
  // During the call bob's page heard who spoke: alice by her user id.
  const heard = await bob.page.evaluate(() => window.speakerEvents);
  const named = heard.flatMap((e) => e.speakers).find((s) => s.userId === "alice");
  check(
    heard.every((e) => e.callId === bobsCall.callId) && named && named.level > 0 && named.level <= 1,
    `activeSpeakers on bob's page: ${JSON.stringify(heard.slice(0, 3))} (${heard.length} events)`,
  );
  check((await active(bob)).length === 0, "an ended call is no longer active");
}

async function demoDecline() {
  const { alice, bob } = await demoRing();
  await bob.page.click("#decline");
  await untilStatus(bob, "ended: declined");
  await untilStatus(alice, "ended: remote_ended");
  check(!(await bob.page.isVisible("#incoming")), "the incoming call is gone");
}

async function demoTimeout() {
  const { alice, bob } = await demoRing();
  // The server's ring timeout (set short for this scenario) ends it.
  await untilStatus(bob, "ended: missed");
  await untilStatus(alice, "ended: remote_ended");
  check(!(await bob.page.isVisible("#incoming")), "the incoming call is gone");
}

// The operator API needs a production node (development mode refuses API
// keys), which serves no demo page: the page's files and its sign-in are
// answered by the test (a user token signed with the node's API key, as
// an app's backend signs them); everything else goes to the node.
function userToken(user) {
  const [kid, secret] = OPERATOR_KEY.split(":");
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${part({ alg: "HS256", typ: "JWT", kid })}.${part({ sub: user, aud: "switchboard:user", iat: now, exp: now + 600 })}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

async function openDemoOnProductionNode(user) {
  const context = await browser.newContext();
  await context.route(`${sb.base}/demo/**`, async (route) => {
    const path = new URL(route.request().url()).pathname;
    const file = path.startsWith("/demo/esm/")
      ? join(DEMO_DIR, "dist/esm", path.slice("/demo/esm/".length))
      : join(DEMO_DIR, "demo", path === "/demo/" ? "index.html" : path.slice("/demo/".length));
    const type = file.endsWith(".js") ? "text/javascript" : "text/html";
    await route.fulfill({ status: 200, contentType: type, body: await readFile(file) });
  });
  await context.route(`${sb.base}/dev/user-token`, (route) =>
    route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify({ token: userToken(user) }) }),
  );
  const page = await context.newPage();
  page.on("pageerror", (e) => log(`${user} page error:`, e.message));
  await page.goto(`${sb.base}/demo/`);
  await page.fill("#user", user);
  await page.click("#signin");
  await waitFor(`${user} signed in`, () => statusOf({ page }).then((s) => s === "ready"), 15000);
  return { user, page, context };
}

// Feature flags reach the demo page live: with video_calls off the video
// choice goes away (and comes back), and a callee calling is off for
// "cannot be called" at once.
async function demoFlags() {
  const alice = await openDemoOnProductionNode("alice");
  const bob = await openDemoOnProductionNode("bob");
  const videoShown = () => alice.page.isVisible("#video-option");
  check(await videoShown(), "video is offered while video_calls is on");
  const setFlag = async (name, body) => {
    const response = await fetch(`${sb.base}/v1/flags/${name}`, {
      method: "PUT",
      headers: { authorization: `Basic ${Buffer.from(OPERATOR_KEY).toString("base64")}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    check(response.status === 200, `PUT ${name}: ${response.status} ${await response.text()}`);
  };
  await setFlag("video_calls", { state: "off" });
  await waitFor("the video choice hidden", async () => !(await videoShown()), 5000);
  const flags = await alice.page.evaluate(async () => (await window.switchboard.getFlags()).flags);
  check(flags.video_calls === false && flags.calling === true, `getFlags: ${JSON.stringify(flags)}`);
  await setFlag("video_calls", { state: "on" });
  await waitFor("the video choice back", videoShown, 5000);

  await setFlag("calling", { state: "on", denyUsers: ["bob"] });
  await alice.page.fill("#callee", "bob");
  await alice.page.click("#call");
  await untilStatus(alice, "bob cannot be called");
  check(!(await bob.page.isVisible("#incoming")), "bob's page does not ring");
}

// Two pages call each other through a node started elsewhere (the
// container image, sfu/tests/packaging.rs): both decode the other's video.
async function externalCall() {
  const alice = await openDemoOnProductionNode("alice");
  const bob = await openDemoOnProductionNode("bob");
  await callAnsweredAndDecoded(alice, bob);
  await alice.page.click("#hangup");
  await untilStatus(alice, "ended: completed");
  await untilStatus(bob, "ended: completed");
}

// Alice's demo page calls bob's, he answers, and each decodes the other.
async function callAnsweredAndDecoded(alice, bob) {
  await alice.page.fill("#callee", "bob");
  await alice.page.click("#call");
  await untilStatus(alice, "outgoing");
  await waitFor("bob's incoming call", () => bob.page.isVisible("#incoming"));
  await bob.page.click("#answer");
  await untilStatus(bob, "connected");
  await untilStatus(alice, "connected");
  await decodeEachOther(alice, bob);
}

// A steady tone as every page's microphone (`--use-file-for-fake-audio-capture`;
// Chromium's default fake microphone beeps 20 ms in 500): 10 s of a 440 Hz
// sine at half scale, 48 kHz mono 16-bit PCM, which Chromium loops.
function toneWav() {
  const rate = 48000;
  const samples = rate * 10;
  const wav = Buffer.alloc(44 + samples * 2);
  wav.write("RIFF", 0);
  wav.writeUInt32LE(36 + samples * 2, 4);
  wav.write("WAVEfmt ", 8);
  wav.writeUInt32LE(16, 16);
  wav.writeUInt16LE(1, 20); // PCM
  wav.writeUInt16LE(1, 22); // mono
  wav.writeUInt32LE(rate, 24);
  wav.writeUInt32LE(rate * 2, 28);
  wav.writeUInt16LE(2, 32);
  wav.writeUInt16LE(16, 34);
  wav.write("data", 36);
  wav.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) wav.writeInt16LE(Math.round(16000 * Math.sin((2 * Math.PI * 440 * i) / rate)), 44 + i * 2);
  const path = join(mkdtempSync(join(tmpdir(), "switchboard-tone-")), "tone.wav");
  writeFileSync(path, wav);
  return path;
}

// Active speakers: three pages, each microphone a tone, each muted at
// first (track disabled: silent frames). Unmuting one makes the others'
// `speakersChanged` name it first within 1 s; muting it and unmuting
// another switches the order within 1 s.
async function activeSpeakers() {
  const pages = [];
  for (const [i, c] of ["red", "green", "blue"].entries()) {
    const p = await openPage(`speaker${i}`, c);
    await setMic(p, false);
    await p.page.evaluate(() => {
      window.speakerLog = [];
      window.client.addEventListener("speakersChanged", (e) =>
        window.speakerLog.push([performance.now(), e.detail.speakers.map((s) => s.participantId), e.detail.speakers.map((s) => s.level)]),
      );
    });
    pages.push(p);
  }
  await allSeeEachOther(pages);
  const [a, b, c] = pages;
  const firstSpeaker = (viewer) => viewer.page.evaluate(() => window.speakerLog.at(-1)?.[1][0] ?? null);
  // Everyone silent to begin with (a tone that played before the mute faded).
  await waitFor("silence everywhere", async () => (await Promise.all(pages.map(firstSpeaker))).every((s) => s === null), 10000);
  for (const [speaker, quiet, viewer] of [[a, null, b], [b, a, c]]) {
    const started = Date.now();
    if (quiet) await setMic(quiet, false);
    await setMic(speaker, true);
    await waitFor(`${viewer.name} to hear ${speaker.name} first`, async () => (await firstSpeaker(viewer)) === speaker.pid, 5000);
    const tookMs = Date.now() - started;
    const last = await viewer.page.evaluate(() => window.speakerLog.at(-1));
    log(JSON.stringify({ speaker: speaker.name, tookMs, order: last[1], levels: last[2] }));
    check(tookMs <= 1000, `${speaker.name} listed first after ${tookMs} ms (at most 1000)`);
  }
  // No page was told more often than every 300 ms (the server's bound, with
  // a little slack for delivery jitter).
  for (const p of pages) {
    const times = await p.page.evaluate(() => window.speakerLog.map(([at]) => at));
    for (let i = 1; i < times.length; i++) check(times[i] - times[i - 1] >= 250, `${p.name}: two speakersChanged ${Math.round(times[i] - times[i - 1])} ms apart`);
  }
}

// Data channels: three pages with `publishData` and one without. Reliable
// messages from two senders at once arrive at every other page complete and
// in order, each with the sender's id as the server attached it; a message
// `to` one participant reaches only it; a payload over 16 KiB, a frame
// naming its own `from`, a send without the permission and a burst over the
// rate are refused with typed errors and reach nobody; the lossy channel
// carries messages too.
async function dataChannels() {
  const noData = { publishAudio: true, publishVideo: true, subscribe: true, publishData: false };
  const pages = [];
  for (const [name, permissions] of [["alice"], ["bob"], ["carol"], ["dave", noData]]) {
    const p = await openPage(name, "red", { publish: false, permissions });
    await p.page.evaluate(() => {
      window.dataLog = [];
      window.errorLog = [];
      window.client.addEventListener("data", (e) => window.dataLog.push(e.detail));
      window.client.addEventListener("servererror", (e) => window.errorLog.push(e.detail.code));
    });
    pages.push(p);
  }
  const [alice, bob, carol, dave] = pages;
  for (const p of pages) {
    await waitFor(`${p.name}'s data channels to open`, () => p.page.evaluate(() =>
      ["switchboard", "switchboard-lossy"].every((l) => window.client.dataChannels.get(l)?.readyState === "open")), 30000);
  }
  const received = (p) => p.page.evaluate(() => window.dataLog);
  const errors = (p) => p.page.evaluate(() => window.errorLog);
  const send = (p, payload, options) => p.page.evaluate(([pl, o]) => window.client.sendData(pl, o), [payload, options]);
  // Within the per-sender burst (100 messages).
  const count = 60;
  await Promise.all([alice, bob].map((p) => p.page.evaluate(([n, name]) => {
    for (let i = 0; i < n; i++) window.client.sendData(`${name}-${i}`);
  }, [count, p.name])));
  for (const viewer of pages) {
    const senders = [alice, bob].filter((s) => s !== viewer);
    await waitFor(`${viewer.name} to get ${senders.length * count} messages`, async () =>
      (await received(viewer)).filter((m) => m.reliable).length >= senders.length * count, 20000);
    const got = await received(viewer);
    for (const sender of senders) {
      const theirs = got.filter((m) => m.from === sender.pid).map((m) => m.payload);
      check(JSON.stringify(theirs) === JSON.stringify([...Array(count).keys()].map((i) => `${sender.name}-${i}`)),
        `${viewer.name} got ${sender.name}'s ${count} messages in order: ${theirs.slice(0, 3)}... (${theirs.length})`);
    }
    check(got.every((m) => m.from === alice.pid || m.from === bob.pid), `${viewer.name}: every sender id is the real sender's`);
  }
  log(`${count} reliable messages each from alice and bob reached bob, carol and dave complete and in order`);
  // Each refusal below is followed by a marker to the room: the reliable
  // channel keeps one sender's order, so a page that has the marker and not
  // the refused message never gets it.
  const marked = async (sender, marker, viewers) => {
    await send(sender, marker);
    for (const v of viewers) await waitFor(`${v.name} to get ${marker}`, async () => (await received(v)).some((m) => m.payload === marker), 10000);
  };
  await send(carol, "for alice only", { to: [alice.pid] });
  await marked(carol, "marker-1", [alice, bob]);
  check((await received(alice)).some((m) => m.payload === "for alice only" && m.from === carol.pid), "alice got carol's message to her");
  check(!(await received(bob)).some((m) => m.payload === "for alice only"), "bob did not get carol's message to alice");
  const refusals = [
    [alice, "x".repeat(16 * 1024 + 1), {}, "message_too_large"],
    [alice, "spoofed", { frame: JSON.stringify({ from: bob.pid, payload: "spoofed" }) }, "bad_message"],
    [dave, "from dave", {}, "permission_denied"],
  ];
  for (const [sender, payload, options, code] of refusals) {
    const before = (await errors(sender)).length;
    await send(sender, payload, options);
    await waitFor(`${sender.name} to be refused with ${code}`, async () => (await errors(sender)).length > before, 10000);
    const got = (await errors(sender)).at(-1);
    check(got === code, `${sender.name}'s ${payload.length}-character message refused with ${got} (want ${code})`);
  }
  await marked(alice, "marker-2", [bob, carol, dave]);
  for (const v of [alice, bob, carol]) {
    const leaked = (await received(v)).filter((m) => m.payload === "spoofed" || m.payload === "from dave" || m.payload.length > 16384);
    check(leaked.length === 0, `${v.name} got no refused message (${leaked.length})`);
  }
  log("a message to one member reached only it; oversize, spoofed and unpermitted messages were refused with typed errors and reached nobody");
  // The lossy channel: unordered, never retransmitted (loopback loses
  // nothing, so every message arrives).
  await bob.page.evaluate(() => { for (let i = 0; i < 20; i++) window.client.sendData(`lossy-${i}`, { reliable: false }); });
  await waitFor("carol to get bob's lossy messages", async () =>
    (await received(carol)).filter((m) => !m.reliable && m.from === bob.pid).length === 20, 10000);
  // A burst over the rate: refused beyond it, and told so.
  await new Promise((r) => setTimeout(r, 2500)); // alice's bucket refills
  const burst = 300;
  await alice.page.evaluate((n) => { for (let i = 0; i < n; i++) window.client.sendData(`burst-${i}`); }, burst);
  await waitFor("alice to be told she is rate limited", async () => (await errors(alice)).includes("rate_limited"), 10000);
  await new Promise((r) => setTimeout(r, 2500));
  await marked(alice, "marker-3", [carol]);
  const relayed = (await received(carol)).filter((m) => m.payload.startsWith("burst-")).length;
  log(`of a burst of ${burst}, ${relayed} were relayed`);
  check(relayed >= 90 && relayed < burst, `the rate limit let ${relayed} of ${burst} through (a burst of 100 at 50/s)`);
}

// A viewer's one remote video: its track id, the layer it asks for, the
// width it decodes.
const videoTrack = (viewer) => viewer.page.evaluate(() => [...window.client.remote.values()].find((r) => r.kind === "video")?.trackId);
const ask = (viewer, quality, more = {}) => videoTrack(viewer).then((trackId) => viewer.page.evaluate(([t, q, m]) => window.client.updateSubscription(t, q, m), [trackId, quality, more]));
const decodedWidth = async (viewer) => (await viewer.page.evaluate(() => window.sb.decodedVideo()))?.frameWidth;

// Constrained downlink (the server estimates each subscriber's downlink):
// two viewers of a three-layer publisher ask for `high`; one's downlink is
// shaped to 300 kbit/s (an HTB class on loopback for packets to its port).
// It comes down to the low layer and receives it with under 2 % loss,
// while the other keeps the high layer; the limit lifted, it is probed back
// up to the high layer within 30 s.
async function constrainedDownlink() {
  check(process.env.SWITCHBOARD_TEST_NETNS === "1", "constrained-downlink shapes loopback: it runs only in its own network namespace");
  const pub = await openPage("publisher", "red", { simulcast: true, size: [960, 540], busy: true });
  const slow = await openPage("slowViewer", "green", { publish: false });
  const fast = await openPage("fastViewer", "blue", { publish: false });
  for (const viewer of [slow, fast]) {
    await waitFor(`${viewer.name} to see red`, () => seesColours(viewer, [pub]), 30000);
    await viewer.page.evaluate(() => {
      window.streamStates = [];
      window.client.addEventListener("streamStateChanged", (e) => window.streamStates.push(e.detail.state));
    });
    await ask(viewer, "high");
  }
  let widths;
  await waitFor("the publisher's low and high layers", async () => {
    const l = await pub.page.evaluate(() => window.sb.outboundLayers());
    widths = { q: l.q?.frameWidth, f: l.f?.frameWidth };
    return widths.q > 0 && widths.f > 0;
  }, 30000);
  for (const viewer of [slow, fast]) {
    await waitFor(`${viewer.name} to decode the high layer`, async () => (await decodedWidth(viewer)) === widths.f, 30000);
  }
  const port = await slow.page.evaluate(async () => {
    const stats = await window.client.sub.getStats();
    let pair;
    stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
    return stats.get(pair.localCandidateId).port;
  });
  const tc = (...args) => execFileSync("tc", args);
  tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10", "r2q", "1000");
  tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit");
  tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", "300kbit", "ceil", "300kbit");
  // About a second of queue at 300 kbit/s before the link drops.
  tc("qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "bfifo", "limit", "40000");
  tc("filter", "add", "dev", "lo", "protocol", "ip", "parent", "1:", "prio", "1", "u32", "match", "ip", "dport", String(port), "0xffff", "flowid", "1:20");
  const shapedAt = Date.now();
  await waitFor("the shaped viewer on the low layer", async () => (await decodedWidth(slow)) === widths.q, 20000);
  const downMs = Date.now() - shapedAt;
  // Settled on it: the loss it sees from now on.
  await sleep(3000);
  const videoCounts = (viewer) => viewer.page.evaluate(async () => {
    const stats = await window.client.sub.getStats();
    let out;
    stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") out = { lost: s.packetsLost, received: s.packetsReceived }; });
    return out;
  });
  const before = await videoCounts(slow);
  // Its decoded width twice a second meanwhile: a probe that overshoots
  // on a busy machine can lift it for a moment before the estimate
  // settles again, so it is judged on most of the window, not one instant.
  const widthsSeen = [];
  for (const end = Date.now() + 5000; Date.now() < end;) {
    widthsSeen.push(await decodedWidth(slow));
    await sleep(500);
  }
  const after = await videoCounts(slow);
  const lost = after.lost - before.lost;
  const received = after.received - before.received;
  const lossPct = (100 * lost) / Math.max(1, lost + received);
  log(JSON.stringify({ downMs, lost, received, lossPct: lossPct.toFixed(2), widthsSeen }));
  check(received > 50, `the shaped viewer kept receiving video (${received} packets in 5 s)`);
  check(lossPct < 2, `loss on the shaped downlink: ${lossPct.toFixed(2)} % (under 2)`);
  const onLow = widthsSeen.filter((w) => w === widths.q).length;
  check(onLow * 4 >= widthsSeen.length * 3, `the shaped viewer stays on the low layer (${onLow} of ${widthsSeen.length} samples)`);
  // The unshaped viewer is on the high layer (a busy machine's scheduling
  // delay can dip its estimate for a moment: it is back within 10 s).
  const fastWidth = await decodedWidth(fast);
  await waitFor("the other viewer on the high layer", async () => (await decodedWidth(fast)) === widths.f, 10000);
  log(JSON.stringify({ otherViewerWidth: fastWidth, otherStreamStates: await fast.page.evaluate(() => window.streamStates) }));
  // The limit lifted: probing finds the room, and it climbs back. The
  // estimate has to grow five-fold; with a CPU burner beside the test it
  // took 6-11 s, once over 20 s: 30 s leaves room for a busy machine.
  tc("class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit");
  const liftedAt = Date.now();
  await waitFor("the viewer back on the high layer", async () => (await decodedWidth(slow)) === widths.f, 30000);
  log(JSON.stringify({ backUpMs: Date.now() - liftedAt, streamStates: await slow.page.evaluate(() => window.streamStates) }));
}

// Simulcast: a publisher page sends three layers of a 960x540 canvas
// (Chromium's minimum for three); one viewer asks for `low`, one for
// `high`, and each decodes its layer's width (the publisher's own
// outbound-rtp per RID says what the widths are). Then the low viewer asks
// for `high`: it decodes the high width within 2 s, with no gap over 500 ms
// between presented frames across the switch. Then `medium`; then dynacast
// (layers nobody asks for are turned off at the publisher, and back on when
// asked for).
async function simulcastLayers() {
  const pub = await openPage("publisher", "red", { simulcast: true, size: [960, 540] });
  const low = await openPage("lowViewer", "green", { publish: false });
  const high = await openPage("highViewer", "blue", { publish: false });
  for (const viewer of [low, high]) await waitFor(`${viewer.name} to see red`, () => seesColours(viewer, [pub]), 30000);
  const layers = () => pub.page.evaluate(() => window.sb.outboundLayers());
  await ask(low, "low");
  await ask(high, "high");
  // Only what someone asks for is sent (dynacast), so the middle layer is
  // measured when it is asked for, below.
  let widths;
  await waitFor("the low and high layers sent", async () => {
    const l = await layers();
    widths = Object.fromEntries(Object.entries(l).map(([rid, e]) => [rid, e.frameWidth]));
    return ["q", "f"].every((rid) => l[rid]?.frameWidth > 0 && l[rid].bytesSent > 0);
  }, 30000);
  log(`layer widths: ${JSON.stringify(widths)}`);
  check(widths.f === 960 && widths.q === 240, `layers at 1 and 1/4 of 960: ${JSON.stringify(widths)}`);
  await waitFor("the low viewer to decode the low layer", async () => (await decodedWidth(low)) === widths.q, 10000);
  await waitFor("the high viewer to decode the high layer", async () => (await decodedWidth(high)) === widths.f, 10000);
  // Each keeps its own layer while the other has a different one.
  check((await decodedWidth(low)) === widths.q && (await decodedWidth(high)) === widths.f, "two viewers, two layers");

  await low.page.evaluate(() => window.sb.recordFrames());
  await new Promise((r) => setTimeout(r, 1000));
  const askedAt = await low.page.evaluate(() => performance.now());
  await ask(low, "high");
  await waitFor("the low viewer to present the high layer", async () => {
    const frames = await low.page.evaluate(() => window.sb.frameLog());
    return frames.some(([, w]) => w === widths.f);
  }, 10000);
  await new Promise((r) => setTimeout(r, 1000));
  const frames = await low.page.evaluate(() => window.sb.frameLog());
  const switchedAt = frames.find(([, w]) => w === widths.f)[0];
  let worstGap = 0;
  for (let i = 1; i < frames.length; i++) worstGap = Math.max(worstGap, frames[i][0] - frames[i - 1][0]);
  const switchMs = Math.round(switchedAt - askedAt);
  log(JSON.stringify({ switchMs, worstGapMs: Math.round(worstGap), frames: frames.length }));
  check(switchMs <= 2000, `switched to the high layer ${switchMs} ms after asking (at most 2000)`);
  check(worstGap <= 500, `longest gap between presented frames across the switch: ${Math.round(worstGap)} ms (at most 500)`);
  check((await decodedWidth(low)) === widths.f, "the switched viewer stays on the high layer");

  // The middle layer, at half the width.
  await ask(low, "medium");
  await waitFor("the low viewer to decode the medium layer", async () => (await decodedWidth(low)) === 480, 10000);
  check((await layers()).h.frameWidth === 480, "the publisher's middle layer is 480 wide");
  // By the size it is shown at: the smallest layer that covers it (the
  // server reads each layer's size from its keyframes).
  await ask(low, null, { width: 200, height: 110 });
  await waitFor("a 200x110 view to get the 240x135 layer", async () => (await decodedWidth(low)) === widths.q, 10000);
  await ask(low, null, { width: 481, height: 200 });
  await waitFor("a 481x200 view to get the 960x540 layer", async () => (await decodedWidth(low)) === widths.f, 10000);

  // Dynacast: with both viewers on `low`, the publisher turns the other
  // encodings off and they stop sending.
  await ask(low, "low");
  await ask(high, "low");
  for (const viewer of [low, high]) {
    await waitFor(`${viewer.name} to decode the low layer`, async () => (await decodedWidth(viewer)) === widths.q, 10000);
  }
  await waitFor("medium and high turned off", async () => {
    const l = await layers();
    return l.q.active && !l.h.active && !l.f.active;
  }, 5000);
  await new Promise((r) => setTimeout(r, 500)); // what the pacer held goes out
  const before = (await layers()).f.bytesSent;
  await new Promise((r) => setTimeout(r, 1500));
  const after = (await layers()).f.bytesSent;
  check(after === before, `the high encoding sent nothing while off (${before} -> ${after} bytes)`);
  // Asked for again, it comes back on and is decoded within 2 s.
  const askedAgain = Date.now();
  await ask(high, "high");
  await waitFor("the high viewer to decode the high layer again", async () => (await decodedWidth(high)) === widths.f, 5000);
  const backMs = Date.now() - askedAgain;
  log(JSON.stringify({ highBackOnMs: backMs }));
  check(backMs <= 2000, `the high layer back on and decoded ${backMs} ms after asking (at most 2000)`);
  // Down: the low viewer high to low, then medium to low, and the high
  // viewer high to low; up: the low viewer low to high, the high viewer
  // low to high (and high to medium is down: four down, two up at least).
  // The shards publish their counts every second or so: the last switch
  // may not be in the first read.
  const switchesCounted = async (metric, least) => {
    let counted;
    await waitFor(`${metric} to count ${JSON.stringify(least)}`, async () => {
      const metrics = await (await fetch(`${sb.base}/metrics`)).text();
      const count = (direction) => Number(metrics.match(new RegExp(`^${metric}\\{direction="${direction}"\\} (\\d+)`, "m"))?.[1]);
      counted = { up: count("up"), down: count("down") };
      return counted.up >= least.up && counted.down >= least.down;
    }, 5000);
    return counted;
  };
  const counted = await switchesCounted("switchboard_layer_switches_total", { up: 2, down: 4 });
  log(`layer switches: up ${counted.up}, down ${counted.down}`);

  // Temporal layers: Chromium's VP8 simulcast sends three per layer
  // (L1T3). Asked for at most 1 fps, the server forwards the high layer's
  // base temporal layer only (a quarter of its frames); asked for every
  // frame again, the others come back at their sync frames. Neither needs
  // a keyframe, and the picture stays the high layer's.
  const modes = Object.fromEntries(Object.entries(await layers()).map(([rid, e]) => [rid, e.scalabilityMode]));
  log(`scalability modes: ${JSON.stringify(modes)}`);
  check(modes.f === "L1T3", `the high layer has three temporal layers (${modes.f})`);
  const decodeRate = async (viewer, ms) => {
    const a = await viewer.page.evaluate(() => window.sb.decodedVideo());
    await sleep(ms);
    const b = await viewer.page.evaluate(() => window.sb.decodedVideo());
    return { fps: Math.round(((b.framesDecoded - a.framesDecoded) * 10000) / ms) / 10, keyframes: b.keyFramesDecoded - a.keyFramesDecoded };
  };
  await sleep(1000);
  const every = await decodeRate(high, 3000);
  await ask(high, "high", { fps: 1 });
  await sleep(1500);
  const base = await decodeRate(high, 3000);
  await ask(high, "high");
  await sleep(1500);
  const restored = await decodeRate(high, 3000);
  const publisherFps = (await layers()).f.framesPerSecond;
  log(JSON.stringify({ publisherFps, every, base, restored }));
  check(base.fps > 0 && base.fps <= every.fps * 0.6, `the base temporal layer only: ${base.fps} of ${every.fps} fps`);
  check(restored.fps >= base.fps * 1.6, `every frame again: ${restored.fps} fps (from ${base.fps})`);
  check(base.keyframes + restored.keyframes === 0, `no keyframe for a temporal change (${base.keyframes + restored.keyframes})`);
  check((await decodedWidth(high)) === widths.f, "the high layer's picture throughout");
  const temporal = await switchesCounted("switchboard_temporal_layer_switches_total", { up: 2, down: 1 });
  log(`temporal layer switches: up ${temporal.up}, down ${temporal.down}`);
}

async function setMic(p, on) {
  await p.page.evaluate((on) => {
    for (const s of window.client.pub.getSenders()) if (s.track?.kind === "audio") s.track.enabled = on;
  }, on);
}

// Two nodes on one Redis: alice's page (and events socket) on the first,
// bob's on the second. The ring crosses nodes through Redis, the room is
// placed on one of them, and each page joins it where the join info says.
async function demoCluster() {
  const nodes = [sb, sb2];
  await waitFor("both nodes listing both", async () => {
    const listed = await Promise.all(nodes.map(async (n) => (await (await fetch(`${n.base}/metrics`)).text()).includes("\nswitchboard_nodes 2\n")));
    return listed.every(Boolean);
  }, 15000);
  const alice = await openDemo("alice", sb.base);
  const bob = await openDemo("bob", sb2.base);
  await callAnsweredAndDecoded(alice, bob);
  const placed = (await (await fetch(`${sb.base}/metrics`)).text()).split("\n").filter((l) => l.startsWith("switchboard_placements_total"));
  log(`placements by the node alice called through: ${placed.join(" ")}`);
  check(placed.some((l) => l.endsWith(" 1")), "the call's room was placed");
  await alice.page.click("#hangup");
  await untilStatus(alice, "ended: completed");
  await untilStatus(bob, "ended: completed");
}

// A throwaway Redis on loopback for the cluster scenario.
async function startRedis() {
  const port = await freePort("tcp");
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  await waitFor("redis-server", () => new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port }, () => { socket.end(); resolve(true); });
    socket.on("error", () => resolve(false));
  }), 10000);
  return { child, url: `redis://127.0.0.1:${port}` };
}

const SCENARIOS = {
  "demo-call": demoCall,
  "demo-cluster": demoCluster,
  "demo-decline": demoDecline,
  "demo-flags": demoFlags,
  "external-call": externalCall,
  "demo-timeout": demoTimeout,
  "relay-udp": () => relayOnly("udp"),
  "relay-tcp": () => relayOnly("tcp"),
  "relay-tls": () => relayOnly("tls"),
  "relay-tls-untrusted": () => relayOnly("tls", { trusted: false }),
  "two-pages-vp8": () => twoPages("VP8"),
  "two-pages-h264": () => twoPages("H264"),
  "four-then-late": fourThenLate,
  "leave-and-kill": leaveAndKill,
  "two-three-two": twoThreeTwo,
  "garbage-flood": garbageFlood,
  "active-speakers": activeSpeakers,
  "simulcast-layers": simulcastLayers,
  "ice-tcp": iceTcp,
  "data-channels": dataChannels,
  "constrained-downlink": constrainedDownlink,
  "own-egress": ownEgress,
  "remb-downlink": rembDownlink,
};

async function main() {
  const run = SCENARIOS[scenario];
  if (!serverBin || !run || (scenario === "external-call") !== Boolean(EXTERNAL_BASE)) {
    console.error(`usage: node run.mjs <switchboard> <${Object.keys(SCENARIOS).join("|")}> (external-call: - with SWITCHBOARD_BASE)`);
    process.exit(2);
  }
  const hardStop = setTimeout(() => {
    console.error(`[${scenario}] hard timeout`);
    for (const child of [sb?.child, sb2?.child, redis?.child]) if (child) child.kill("SIGKILL");
    process.exit(3);
  }, 150000);
  const tls = scenario.startsWith("relay-tls");
  const demo = scenario === "demo-flags"
    ? { SWITCHBOARD_API_KEY: OPERATOR_KEY, SWITCHBOARD_CALL_TOKEN_SECRET: "browser-call-token-secret-0123456789abcdef" }
    : scenario.startsWith("demo-")
      ? { SWITCHBOARD_DEV_DEMO_DIR: DEMO_DIR, SWITCHBOARD_RING_TIMEOUT_SECONDS: scenario === "demo-timeout" ? "4" : "30" }
      : {};
  if (EXTERNAL_BASE) {
    sb = { child: null, base: EXTERNAL_BASE, ws: `${EXTERNAL_BASE.replace(/^http/, "ws")}/v1/rtc` };
  } else if (scenario === "demo-cluster") {
    redis = await startRedis();
    const node = (id) => ({ ...demo, SWITCHBOARD_REDIS_URL: redis.url, SWITCHBOARD_REDIS_NAMESPACE: "demo", SWITCHBOARD_NODE_ID: id });
    sb = await startSwitchboard(node("node-1"));
    sb2 = await startSwitchboard(node("node-2"));
  } else if (scenario === "own-egress") {
    sb = await startSwitchboard({ SWITCHBOARD_OWN_EGRESS: "true" });
  } else if (scenario === "constrained-downlink") {
    sb = await startSwitchboard({ SWITCHBOARD_DOWNLINK_ESTIMATION: "true" });
  } else if (scenario === "ice-tcp") {
    sb = await startSwitchboard({ SWITCHBOARD_RTC_TCP_BIND: `127.0.0.1:${await freePort("tcp")}` });
  } else {
    sb = await startSwitchboard(tls ? testCertificate() : demo);
  }
  web = await startStatic();
  let failed = false;
  let wrapperDir;
  try {
    // The TLS relay's certificate is self-signed: trusted only when told to.
    let args = scenario === "relay-tls" ? [...CHROMIUM_FLAGS, "--ignore-certificate-errors"] : CHROMIUM_FLAGS;
    if (scenario === "active-speakers") args = [...args, `--use-file-for-fake-audio-capture=${toneWav()}`];
    let executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
    if (scenario === "own-egress") {
      // WebRTC logs in the renderers, which write only to stderr (not to
      // --log-file): a wrapper sends every process's stderr to the file.
      args = [...args, "--enable-logging=stderr", "--v=0"];
      wrapperDir = mkdtempSync(join(tmpdir(), "sb-chromium-"));
      const wrapper = join(wrapperDir, "chromium");
      writeFileSync(wrapper, `#!/bin/sh\nexec "${executablePath}" "$@" 2>>"${CHROMIUM_LOG}"\n`, { mode: 0o755 });
      executablePath = wrapper;
    }
    // A page the test fulfils has no address of its own, so Chromium takes
    // it for a public one and blocks its sockets to loopback (Local
    // Network Access); the node is on loopback only in the test.
    if (scenario === "demo-flags" || scenario === "external-call") {
      args = args.map((a) => (a.startsWith("--disable-features=") ? `${a},LocalNetworkAccessChecks` : a));
    }
    browser = await chromium.launch({ executablePath, args });
    await run();
    log("passed");
  } catch (e) {
    failed = true;
    console.error(`[${scenario}] FAILED: ${e.stack || e}`);
    await reportFailure().catch((r) => console.error(`[${scenario}] no report: ${r}`));
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (wrapperDir) rmSync(wrapperDir, { recursive: true, force: true });
    if (!process.env.KEEP_CHROMIUM_LOG) rmSync(CHROMIUM_LOG, { force: true });
    web.server.close();
    sb.child?.kill("SIGINT");
    if (sb2) sb2.child.kill("SIGINT");
    if (redis) redis.child.kill("SIGKILL");
    clearTimeout(hardStop);
  }
  process.exit(failed ? 1 : 0);
}

main();
