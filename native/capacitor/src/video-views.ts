// Video views the plugin places over the page at a frame the app gives, in
// CSS pixels of the web view: on phones a native renderer over the web
// view (RTCMTLVideoView, SurfaceViewRenderer), on the web a positioned
// <video> element, so an app lays out calls the same way everywhere.

import type { VideoFrame, VideoViewOptions } from "./definitions.js";

export class VideoViews {
  private views = new Map<string, HTMLVideoElement>();

  static key(callId: string, trackId: string): string {
    return `${callId}/${trackId}`;
  }

  /** Shows `stream` at the frame, or moves the view already there. */
  show({ callId, trackId, frame, fit, mirror }: VideoViewOptions, stream: MediaStream): void {
    const key = VideoViews.key(callId, trackId);
    let video = this.views.get(key);
    if (!video) {
      video = document.createElement("video");
      video.autoplay = true;
      video.playsInline = true;
      video.muted = true; // call audio plays where the app plays it, once
      video.dataset.switchboardView = key;
      Object.assign(video.style, { position: "fixed", pointerEvents: "none", zIndex: "2147483000" });
      document.body.appendChild(video);
      this.views.set(key, video);
    }
    if (video.srcObject !== stream) video.srcObject = stream;
    place(video, frame);
    video.style.objectFit = fit ?? "cover";
    video.style.transform = mirror ? "scaleX(-1)" : "";
    void video.play().catch(() => undefined);
  }

  hide(callId: string, trackId: string): void {
    const key = VideoViews.key(callId, trackId);
    this.views.get(key)?.remove();
    this.views.delete(key);
  }

  /** Every view of a call (it ended). */
  hideCall(callId: string): void {
    for (const key of [...this.views.keys()]) {
      if (key.startsWith(`${callId}/`)) {
        this.views.get(key)?.remove();
        this.views.delete(key);
      }
    }
  }
}

function place(video: HTMLVideoElement, { x, y, width, height }: VideoFrame): void {
  Object.assign(video.style, { left: `${x}px`, top: `${y}px`, width: `${width}px`, height: `${height}px` });
}
