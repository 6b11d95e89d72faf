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


class FakeSystem(sb.SystemCallUi, sb.AudioRoutes, sb.Credentials, sb.CallEvents):
    """A fake CallKit / Telecom, audio session and app recording every report."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reports = []

    def _record(self, *report):
        with self._lock:
            self.reports.append(report)

    def has(self, *report):
        with self._lock:
            return report in self.reports

    def report_incoming_call(self, call):
        self._record("incoming", call.call_uuid, call.caller_name, call.video)

    def report_outgoing_call_started(self, call_uuid, call_id):
        self._record("outgoing", call_uuid)

    def report_call_connected(self, call_uuid):
        self._record("connected", call_uuid)

    def report_call_ended(self, call_uuid, reason):
        self._record("ended", call_uuid, reason)

    def select_route(self, endpoint_id):
        self._record("route", endpoint_id)

    def refresh_user_token(self):
        # The tokens here outlive the test: being asked is a failure.
        self._record("token asked")
        raise sb.PortError.Failed("no app backend in this test")

    def remote_track_added(self, call_uuid, track):
        self._record("track", track.user_id, track.video)

    def remote_track_removed(self, call_uuid, track_id):
        self._record("track removed", track_id)

    def remote_track_muted(self, call_uuid, track_id, muted):
        self._record("track muted", track_id, muted)

    def remote_track_paused(self, call_uuid, track_id, paused):
        self._record("track paused", track_id, paused)

    def call_reconnecting(self, call_uuid):
        self._record("reconnecting", call_uuid)

    def call_reconnected(self, call_uuid):
        self._record("reconnected", call_uuid)

    def flags_changed(self, flags):
        self._record("flags", flags.get("video_calls"))

    def active_speakers_changed(self, call_uuid, speakers):
        self._record("speakers", call_uuid, tuple(s.participant_id for s in speakers))

    def data_received(self, call_uuid, message):
        self._record("data", call_uuid, message.user_id, message.payload)


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
        trusted_ca_pem=None,
    )
    # What the app saved for a cold start reads back the same.
    assert sb.client_config_from_json(sb.client_config_to_json(config)) == config
    media = sb.str0m_media_factory("127.0.0.1")
    core = sb.Client(config, system, media, system, Tokens(tokens), system, system)
    core.audio_routes_changed(
        [
            sb.AudioEndpoint(id="earpiece", kind=sb.AudioRouteKind.EARPIECE, name="Phone"),
            sb.AudioEndpoint(id="speaker", kind=sb.AudioRouteKind.SPEAKER, name="Speaker"),
        ],
        "earpiece",
    )
    return core, system


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
    wait("bob's flags", lambda: bob_ui.has("flags", True))
    alice_uuid = "7d3c1b2a-9e8f-4a6b-8c5d-4e3f2a1b0c9d"
    call_id = alice.start_call("bob", True, alice_uuid)
    assert alice_ui.has("outgoing", alice_uuid), alice_ui.reports
    assert alice.call_id(alice_uuid) == call_id
    alice.audio_session_activated()

    wait("bob's incoming call", lambda: bob_ui.has("incoming", call_id, "alice", True))
    bob.incoming_call_displayed(call_id)
    bob.answer(call_id)
    bob.audio_session_activated()

    wait("both connected", lambda: alice_ui.has("connected", alice_uuid) and bob_ui.has("connected", call_id))
    for name, c, uuid in (("alice", alice, alice_uuid), ("bob", bob, call_id)):
        wait(f"{name} receiving audio and video", lambda: received(c, uuid)[0] >= 100 and received(c, uuid)[1] == 2)

    counts = (received(alice, alice_uuid)[0], received(bob, call_id)[0])
    alice.end(alice_uuid)
    wait("bob's call to end", lambda: bob_ui.has("ended", call_id, sb.EndedReason.REMOTE_ENDED))
    assert alice_ui.has("ended", alice_uuid, sb.EndedReason.LOCAL_ENDED), alice_ui.reports
    incoming = [r for r in bob_ui.reports if r[0] == "incoming"]
    assert len(incoming) == 1, bob_ui.reports
    assert ("route", "speaker") in bob_ui.reports, bob_ui.reports
    assert ("track", "alice", True) in bob_ui.reports, bob_ui.reports
    assert not any(r[0] == "token asked" for r in bob_ui.reports + alice_ui.reports)
    try:
        bob.select_audio_route("hdmi")
        raise SystemExit("an endpoint never reported was selected")
    except sb.ClientError.Refused as refused:
        assert refused.code == "unknown_route", refused

    # Every push gets a decision, bad ones too; a late copy of the call
    # that just ended is reported and ended (iOS must report every VoIP push).
    decision = bob.handle_push("not a push")
    assert isinstance(decision, sb.PushDecision.NOT_A_CALL), decision
    late = json.dumps({"event": "incoming_call", "callId": call_id, "fromUserId": "alice",
                       "type": "video", "ringEpoch": 1, "expiresAt": 1})
    decision = bob.handle_push(late)
    assert isinstance(decision, sb.PushDecision.REPORT_AND_END), decision
    assert decision.call.call_uuid == call_id, decision
    assert sb.telecom_disconnect_cause(decision.reason) == sb.TelecomDisconnectCause.REMOTE, decision

    print(f"python call ok: {call_id}: alice received {counts[0]} packets, bob {counts[1]}")
    alice.shutdown()
    bob.shutdown()


if __name__ == "__main__":
    main()
