"""Alice calls Bob through the generated Python bindings of the client core.

Run by `native/tests/bindings.rs` with PYTHONPATH pointing at the generated
module and library, and SWITCHBOARD_URL / ALICE_TOKEN / BOB_TOKEN set. Both
devices use the core's str0m media port; the system UI, audio route and push
token ports are implemented here, in Python. Exits non-zero on any failure.
"""

import json
import os
import threading
import time
import urllib.request

import native as sb


class FakeSystem(sb.SystemCallUi, sb.AudioRoute):
    """A fake CallKit / Telecom and audio session recording every report."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reports = []

    def _record(self, *report):
        with self._lock:
            self.reports.append(report)

    def has(self, *report):
        with self._lock:
            return report in self.reports

    def report_incoming_call(self, call_id, caller, video):
        self._record("incoming", call_id, caller, video)

    def report_outgoing_call_started(self, call_id):
        self._record("outgoing", call_id)

    def report_call_connected(self, call_id):
        self._record("connected", call_id)

    def report_call_ended(self, call_id, reason):
        self._record("ended", call_id, reason)

    def set_route(self, route):
        self._record("route", route)


class Tokens(sb.PushTokens):
    def __init__(self, tokens):
        self.tokens = tokens

    def current(self):
        return self.tokens


def wait(what, check, limit=15.0):
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def client(user_token, device_id, platform, tokens, **ios):
    system = FakeSystem()
    config = sb.ClientConfig(
        server_url=os.environ["SWITCHBOARD_URL"],
        user_token=user_token,
        device_id=device_id,
        platform=platform,
        video=True,
        bundle_id=ios.get("bundle_id"),
        apns_environment=ios.get("apns_environment"),
    )
    media = sb.str0m_media_factory("127.0.0.1")
    return sb.Client(config, system, media, system, Tokens(tokens)), system


def devices(user_token):
    request = urllib.request.Request(
        os.environ["SWITCHBOARD_URL"] + "/v1/devices",
        headers={"Authorization": f"Bearer {user_token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return [d["deviceId"] for d in json.load(response)]


def received(client, call_id):
    stats = client.media_stats(call_id)
    return (stats.packets_received, stats.remote_tracks) if stats else (0, 0)


def main():
    alice, alice_ui = client(
        os.environ["ALICE_TOKEN"],
        "a-iphone",
        sb.Platform.IOS,
        sb.DevicePushTokens(apns_voip="aa" * 32, apns_alert="bb" * 32, fcm=None),
        bundle_id="app.example.calls",
        apns_environment="sandbox",
    )
    bob, bob_ui = client(
        os.environ["BOB_TOKEN"],
        "b-pixel",
        sb.Platform.ANDROID,
        sb.DevicePushTokens(apns_voip=None, apns_alert=None, fcm="f" * 40),
    )

    # Bob's core registers his phone in the background (through the
    # PushTokens port); a call to a user without devices ends at once.
    wait("bob's device registration", lambda: "b-pixel" in devices(os.environ["BOB_TOKEN"]))
    call_id = alice.start_call("bob", True)
    assert alice_ui.has("outgoing", call_id), alice_ui.reports
    alice.audio_session_activated()

    wait("bob's incoming call", lambda: bob_ui.has("incoming", call_id, "alice", True))
    bob.answer(call_id)
    bob.audio_session_activated()

    wait("both connected", lambda: alice_ui.has("connected", call_id) and bob_ui.has("connected", call_id))
    for name, c in (("alice", alice), ("bob", bob)):
        wait(f"{name} receiving audio and video", lambda: received(c, call_id)[0] >= 100 and received(c, call_id)[1] == 2)

    counts = (received(alice, call_id)[0], received(bob, call_id)[0])
    alice.end(call_id)
    wait("bob's call to end", lambda: bob_ui.has("ended", call_id, sb.EndedReason.COMPLETED))
    assert alice_ui.has("ended", call_id, sb.EndedReason.COMPLETED), alice_ui.reports
    incoming = [r for r in bob_ui.reports if r[0] == "incoming"]
    assert len(incoming) == 1, bob_ui.reports
    assert ("route", sb.AudioRouteKind.SPEAKER) in bob_ui.reports, bob_ui.reports

    # Bad input from Python gets a typed error, not a crash.
    try:
        bob.handle_push("not a push")
        raise SystemExit("a bad push was accepted")
    except sb.ClientError.BadPush:
        pass

    print(f"python call ok: {call_id}: alice received {counts[0]} packets, bob {counts[1]}")
    alice.shutdown()
    bob.shutdown()


if __name__ == "__main__":
    main()
