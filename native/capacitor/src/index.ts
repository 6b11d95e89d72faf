import { registerPlugin } from "@capacitor/core";

import type { SwitchboardPlugin } from "./definitions.js";

/** The plugin; on the web it loads the browser implementation. */
export const Switchboard = registerPlugin<SwitchboardPlugin>("Switchboard", {
  web: () => import("./web.js").then((m) => new m.SwitchboardWeb()),
});

export * from "./definitions.js";
export { SwitchboardError } from "./api.js";
export { SwitchboardWebClient } from "./web-client.js";
