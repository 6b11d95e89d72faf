// The device events socket's messages (control/API.md, "Device events"),
// parsed into what the web client acts on. Unknown message types and
// fields are ignored: newer servers may send more (mission section 11.3).

/** Feature flags by name, as the server decided them for this device. */
export type Flags = Record<string, boolean>;

export type ServerEvent =
  | { type: "authenticated"; flags?: Flags }
  | { type: "flags"; flags: Flags }
  | { type: "ringing"; callId: string; fromUserId: string; video: boolean; expiresAt: number }
  | { type: "cancelled"; callId: string; reason: string }
  | { type: "accepted"; callId: string }
  | { type: "ended"; callId: string }
  | { type: "error"; code: string; message: string };

const text = (v: unknown): v is string => typeof v === "string" && v.length > 0;

/** A message's `flags`: names to booleans, anything else left out. */
export function parseFlags(v: unknown): Flags | undefined {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return undefined;
  const flags: Flags = {};
  for (const [name, on] of Object.entries(v)) if (typeof on === "boolean") flags[name] = on;
  return flags;
}

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
    case "authenticated": {
      const flags = parseFlags(m.flags);
      return flags ? { type: "authenticated", flags } : { type: "authenticated" };
    }
    case "flags": {
      const flags = parseFlags(m.flags);
      return flags ? { type: "flags", flags } : null;
    }
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
