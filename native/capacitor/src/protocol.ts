// The device events socket's messages (control/API.md, "Device events"),
// parsed into what the web client acts on. Unknown message types and
// fields are ignored: newer servers may send more (mission section 11.3).

export type ServerEvent =
  | { type: "authenticated" }
  | { type: "ringing"; callId: string; fromUserId: string; video: boolean; expiresAt: number }
  | { type: "cancelled"; callId: string; reason: string }
  | { type: "accepted"; callId: string }
  | { type: "ended"; callId: string }
  | { type: "error"; code: string; message: string };

const text = (v: unknown): v is string => typeof v === "string" && v.length > 0;

export function parseEvent(raw: string): ServerEvent | null {
  let m: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(raw);
    if (typeof parsed !== "object" || parsed === null) return null;
    m = parsed as Record<string, unknown>;
  } catch {
    return null;
  }
  switch (m.type) {
    case "authenticated":
      return { type: "authenticated" };
    case "error":
      return { type: "error", code: String(m.code ?? ""), message: String(m.message ?? "") };
  }
  const callId = m.callId;
  if (!text(callId)) return null;
  switch (m.type) {
    case "call.ringing":
      if (!text(m.fromUserId) || typeof m.expiresAt !== "number") return null;
      return { type: "ringing", callId, fromUserId: m.fromUserId, video: m.callType === "video", expiresAt: m.expiresAt };
    case "call.cancelled":
      return text(m.reason) ? { type: "cancelled", callId, reason: m.reason } : null;
    case "call.event":
      if (m.event === "call.accepted") return { type: "accepted", callId };
      if (m.event === "call.ended") return { type: "ended", callId };
      return null;
    default:
      return null;
  }
}
