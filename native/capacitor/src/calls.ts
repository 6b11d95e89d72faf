// The web client's calls as a small state machine with no I/O: inputs are
// server events and the user's actions, outputs are the plugin events to
// emit and the acknowledgements to send. It follows the Rust core's rules
// (native/src/call_engine.rs) where they apply to a browser tab:
// - a ring for a call already known (or ended here) is not a new call;
// - a ring past its deadline is ignored (no CallKit to satisfy on the web);
// - an outgoing call connects when the callee answered *and* media is up;
// - cancels end a ringing call with the matching reason.

import type {
  ActiveCall,
  CallEndedEvent,
  CallState,
  CallStateChangedEvent,
  EndReason,
  IncomingCallEvent,
} from "./definitions.js";
import type { ServerEvent } from "./protocol.js";

export type Effect =
  | { kind: "incomingCall"; data: IncomingCallEvent }
  | { kind: "callStateChanged"; data: CallStateChangedEvent }
  | { kind: "callEnded"; data: CallEndedEvent }
  | { kind: "ack"; callId: string };

/** What `getActiveCalls` shows of a call, and what the rules need besides. */
interface Call extends Omit<ActiveCall, "callId"> {
  /** Outgoing and not yet answered by the callee. */
  awaitingAnswer: boolean;
  mediaUp: boolean;
}

const REMEMBER_ENDED = 64;
/** Answers heard for calls not created here yet (see `acceptedEarly`). */
const REMEMBER_EARLY_ACCEPTS = 8;

const FRESH = { muted: false, held: false, mediaUp: false };

const CANCEL_REASONS: Record<string, EndReason> = {
  answered_elsewhere: "answered_elsewhere",
  declined_elsewhere: "declined_elsewhere",
  missed: "missed",
};

export class Calls {
  private calls = new Map<string, Call>();
  private ended: string[] = [];
  /**
   * `call.accepted` for call ids not known here: the events socket can
   * outrun the create response (a retried create, a slow link), and a call
   * id is never reused, so `started` consults these.
   */
  private acceptedEarly: string[] = [];

  state(callId: string): CallState | undefined {
    return this.calls.get(callId)?.state;
  }

  video(callId: string): boolean {
    return this.calls.get(callId)?.video ?? false;
  }

  /** Every call not yet ended, for `getActiveCalls`. */
  active(): ActiveCall[] {
    return [...this.calls].map(([callId, c]) => ({
      callId,
      state: c.state,
      video: c.video,
      outgoing: c.outgoing,
      remoteUserId: c.remoteUserId,
      muted: c.muted,
      held: c.held,
    }));
  }

  /** The user's mute and hold, remembered for `getActiveCalls`. */
  setMuted(callId: string, muted: boolean): boolean {
    const call = this.calls.get(callId);
    if (call) call.muted = muted;
    return call !== undefined;
  }

  setHeld(callId: string, held: boolean): boolean {
    const call = this.calls.get(callId);
    if (call) call.held = held;
    return call !== undefined;
  }

  onServerEvent(event: ServerEvent, nowMs: number): Effect[] {
    switch (event.type) {
      case "ringing": {
        const { callId } = event;
        if (this.calls.has(callId) || this.ended.includes(callId)) return [];
        if (event.expiresAt <= nowMs) return [];
        const { fromUserId, video, expiresAt } = event;
        this.calls.set(callId, {
          ...FRESH,
          state: "ringing",
          video,
          outgoing: false,
          remoteUserId: fromUserId,
          awaitingAnswer: false,
        });
        return [
          { kind: "incomingCall", data: { callId, fromUserId, video, expiresAt } },
          { kind: "callStateChanged", data: { callId, state: "ringing" } },
          { kind: "ack", callId },
        ];
      }
      case "cancelled":
        return this.end(event.callId, CANCEL_REASONS[event.reason] ?? "remote_ended");
      case "accepted": {
        const call = this.calls.get(event.callId);
        if (!call) {
          if (!this.ended.includes(event.callId) && !this.acceptedEarly.includes(event.callId)) {
            this.acceptedEarly.push(event.callId);
            if (this.acceptedEarly.length > REMEMBER_EARLY_ACCEPTS) this.acceptedEarly.shift();
          }
          return [];
        }
        call.awaitingAnswer = false;
        return this.maybeConnected(event.callId);
      }
      case "ended": {
        const call = this.calls.get(event.callId);
        return this.end(event.callId, call?.state === "connected" ? "completed" : "remote_ended");
      }
      default:
        return [];
    }
  }

  /** The API created our outgoing call. */
  started(callId: string, video: boolean, calleeUserId: string): Effect[] {
    const early = this.acceptedEarly.indexOf(callId);
    if (early >= 0) this.acceptedEarly.splice(early, 1);
    this.calls.set(callId, {
      ...FRESH,
      state: "outgoing",
      video,
      outgoing: true,
      remoteUserId: calleeUserId,
      awaitingAnswer: early < 0,
    });
    return [{ kind: "callStateChanged", data: { callId, state: "outgoing" } }];
  }

  /** The user answers: true if the call was ringing (then accept it). */
  answer(callId: string): { accept: boolean; effects: Effect[] } {
    const call = this.calls.get(callId);
    if (call?.state !== "ringing") return { accept: false, effects: [] };
    call.state = "connecting";
    return { accept: true, effects: [{ kind: "callStateChanged", data: { callId, state: "connecting" } }] };
  }

  mediaConnected(callId: string): Effect[] {
    const call = this.calls.get(callId);
    if (!call) return [];
    call.mediaUp = true;
    return this.maybeConnected(callId);
  }

  /** Ended here (hang up, decline, failure) or by the server. */
  end(callId: string, reason: EndReason): Effect[] {
    const call = this.calls.get(callId);
    if (!call) return [];
    this.calls.delete(callId);
    this.ended.push(callId);
    if (this.ended.length > REMEMBER_ENDED) this.ended.shift();
    return [
      { kind: "callStateChanged", data: { callId, state: "ended" } },
      { kind: "callEnded", data: { callId, reason } },
    ];
  }

  private maybeConnected(callId: string): Effect[] {
    const call = this.calls.get(callId);
    if (!call || call.state === "connected" || call.state === "ringing") return [];
    if (!call.mediaUp || call.awaitingAnswer) return [];
    call.state = "connected";
    return [{ kind: "callStateChanged", data: { callId, state: "connected" } }];
  }
}
