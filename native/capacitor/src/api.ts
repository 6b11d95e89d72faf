// The call HTTP API (control/API.md) as a device uses it. `fetch` is
// injectable so the node tests can check requests and error handling.

export class SwitchboardError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(`${code}: ${message}`);
    this.name = "SwitchboardError";
  }
}

export interface JoinInfo {
  callId: string;
  callToken: string;
  rtcPath: string;
  /** The signaling socket of the node hosting the room, when placed. */
  rtcUrl?: string;
  iceServers: RTCIceServer[];
}

type Fetch = (input: string, init?: RequestInit) => Promise<Response>;

export class CallApi {
  constructor(
    readonly base: string,
    private token: () => string,
    readonly deviceId: string,
    private fetchImpl: Fetch = (input, init) => fetch(input, init),
    /** Calls created here allow data channels (`dataChannels` at create). */
    private dataChannels = false,
  ) {
    this.base = base.replace(/\/+$/, "");
  }

  registerDevice(body: Record<string, unknown>): Promise<unknown> {
    return this.post("/v1/devices", { deviceId: this.deviceId, ...body });
  }

  async createCall(calleeUserId: string, video: boolean): Promise<JoinInfo> {
    const body = { calleeUserIds: [calleeUserId], type: video ? "video" : "audio", deviceId: this.deviceId, dataChannels: this.dataChannels };
    return joinInfo(await this.post("/v1/calls", body));
  }

  async accept(callId: string): Promise<JoinInfo> {
    return joinInfo(await this.post(`/v1/calls/${encodeURIComponent(callId)}/accept`, { deviceId: this.deviceId }));
  }

  async decline(callId: string): Promise<void> {
    await this.post(`/v1/calls/${encodeURIComponent(callId)}/decline`, { deviceId: this.deviceId });
  }

  async end(callId: string): Promise<void> {
    await this.post(`/v1/calls/${encodeURIComponent(callId)}/end`, {});
  }

  /** Telemetry about a call (`control/API.md` "Call reports"); never call state. */
  async report(callId: string, reports: Record<string, unknown>[]): Promise<void> {
    await this.post(`/v1/calls/${encodeURIComponent(callId)}/reports`, { deviceId: this.deviceId, reports });
  }

  private async post(path: string, body: unknown): Promise<unknown> {
    let response: Response;
    try {
      response = await this.fetchImpl(`${this.base}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${this.token()}` },
        body: JSON.stringify(body),
      });
    } catch (e) {
      throw new SwitchboardError(0, "unreachable", String(e));
    }
    const text = await response.text();
    let value: unknown = null;
    try {
      value = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON: only the status speaks.
    }
    if (!response.ok) {
      const v = (value ?? {}) as { code?: unknown; message?: unknown };
      throw new SwitchboardError(response.status, String(v.code ?? "http_" + response.status), String(v.message ?? text));
    }
    return value;
  }
}

function joinInfo(value: unknown): JoinInfo {
  const v = (value ?? {}) as { call?: { callId?: unknown; state?: unknown; endReason?: unknown }; callToken?: unknown; rtcPath?: unknown; rtcUrl?: unknown; iceServers?: unknown };
  if (typeof v.callToken !== "string" || typeof v.call?.callId !== "string") {
    // No token: the call is over already (e.g. the callee has no device).
    throw new SwitchboardError(200, String(v.call?.endReason ?? "call_ended"), `the call is ${String(v.call?.state ?? "over")}`);
  }
  return {
    callId: v.call.callId,
    callToken: v.callToken,
    rtcPath: typeof v.rtcPath === "string" ? v.rtcPath : "/v1/rtc",
    rtcUrl: typeof v.rtcUrl === "string" && /^wss?:\/\//.test(v.rtcUrl) ? v.rtcUrl : undefined,
    iceServers: Array.isArray(v.iceServers) ? (v.iceServers as RTCIceServer[]) : [],
  };
}
