// worldstream play: browser client. No build step, no dependencies.
//
// Protocol (docs/play.md): JSON text messages both ways; the server answers each clip with a JSON
// `clip` header followed by exactly `n_frames` binary JPEG messages.
//
// Pipelined pull: up to `max_in_flight` actions (the server's pipeline depth, from `hello`; else 2) are
// outstanding at once, so the server samples clip k+1 while clip k decodes. The next action (keys held,
// mouse moved since the last send) goes out as soon as fewer are in flight AND the video already
// committed (frames buffered + frames of the clips in flight) would run out before the clip it asks for
// is predicted to arrive (+ jitter + a margin). Prediction: the server's DiT takes a new action once it
// has sampled the ones in flight (their DiT times and the last clip's DiT end come from the `clip`
// headers' timings), and the clip arrives one round trip L after that (L measured on actions sent
// alone). An action is also held back until the DiT is about to be free (`holdGuardMs` before): sent
// earlier it would only wait on the server, and the keys it carries would be older. So a server slower
// than real time gets its pipeline kept full (the highest frame rate it can give) at about L + guard of
// latency, and a faster one is asked just in time (latency about L + margin, not a whole buffer).
// NOTE never L from overlapped actions: such a clip takes longer (it waits for, or shares the CPU with,
// the one before), and counting it would make the page ask earlier, overlap more, measure longer round
// trips again... a spiral into the deepest pipeline and the highest latency even when one clip at a time
// keeps up with real time (seen on a loaded 2-core CPU). Frames are shown in order at the session fps
// from a small playback buffer (after running dry, playback resumes once `prebufferMs` is buffered).
"use strict";

(() => {
  const CFG = {
    arrowMouse: 0.1,          // MG3's usual mouse magnitude: 0.1 = 1.5 deg per frame
    degPerMouseUnit: 15,      // MG3 kinematics: mouse 1.0 turns 15 deg per frame
    mouseDegPerPixel: 0.12,   // pointer-lock sensitivity (degrees of turn per pixel of movement)
    maxBufferClips: 2,        // buffered beyond the request target + this many clips -> skip ahead
    requestMarginMs: 150,     // request the next clip this long before the buffer would run dry
    jitterFactor: 2,          // ... plus this many mean deviations of the measured round trip
    holdGuardMs: 100,         // send a pipelined action this long before the server's DiT is free
    leadInitMs: 600,          // round-trip estimate before the first clip answered an action
    leadSmoothing: 0.3,       // EMA weight of a new round-trip sample
    defaultInFlight: 2,       // actions outstanding when the server's hello does not say
    maxInFlight: 8,           // never more, whatever the server says
    prebufferMs: 120,         // after the buffer ran dry, resume playback once this much is buffered
    logClips: 256,            // clip headers kept in S.clipLog (tests, debugging)
    uploadMaxSide: 640,       // uploads are downscaled in the browser before sending
    pingEveryMs: 5000,
    errorsShown: 8,
    outstandingTimeoutMs: 60000,
    errorBackoffMs: 1000,
  };
  const KEY_CODES = { KeyW: "W", KeyA: "A", KeyS: "S", KeyD: "D", Space: "Space" };
  const ARROWS = ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"];

  const $ = (id) => document.getElementById(id);
  const screen = $("screen");
  const ctx = screen.getContext("2d");
  const mini = $("minimap");
  const mctx = mini.getContext("2d");
  const mouseHud = $("mouse-hud");
  const hctx = mouseHud.getContext("2d");

  // all client state in one object (exposed as window.worldstream for debugging and tests)
  const S = {
    ws: null, hello: null, connected: false, paused: false, closeInfo: null,
    episode: 0, resetPending: false,
    header: null, framesLeft: 0, frameIdx: 0,          // framing of the clip being received
    queue: [], decodeChain: Promise.resolve(),          // decoded frames waiting to be shown
    held: new Set(), tapped: new Set(), arrows: new Set(), pointer: [0, 0], locked: false,
    seq: 0, inFlight: [], maxInFlight: CFG.defaultInFlight,  // actions sent, their clip not arrived
    leadMs: CFG.leadInitMs, leadDevMs: 0, ditMs: null, ditEnd: null,  // L, its deviation; server DiT
    inFlightPeak: 0, actionsSent: 0,
    decoding: 0, rebuffering: true,                     // frames being decoded; waiting to (re)start playback
    clipLog: [], expect: null, gaps: 0,                 // arrival order: next clip / frame expected
    lastDrawn: null, orderErrors: 0, skippedFrames: 0,  // display order
    latencies: [],
    poses: [], memFrames: [], shownIndex: -1,           // per-episode camera path (global frame index)
    lastPose: null, lastHeader: null,
    framesDrawn: 0, clipsReceived: 0, drawTimes: [], latencyMs: null, nextDrawAt: 0,
    upload: null, rttMs: null, retryAt: 0,
  };
  window.worldstream = S;
  S.cfg = CFG;

  // ---- messages ----------------------------------------------------------------------------------

  function showMessage(text, code, kind) {
    const li = document.createElement("li");
    if (kind) li.className = kind;
    if (code) {
      const c = document.createElement("span");
      c.className = "code";
      c.textContent = code;
      li.appendChild(c);
    }
    li.appendChild(document.createTextNode(text));
    const list = $("errors");
    list.prepend(li);
    while (list.children.length > CFG.errorsShown) list.lastChild.remove();
  }

  function setStatus(state, text) {
    const el = $("status");
    el.className = "status " + state;
    el.dataset.state = state;
    el.textContent = text;
  }

  function send(obj) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    S.ws.send(JSON.stringify(obj));
    return true;
  }

  // ---- connection ----------------------------------------------------------------------------

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws`);
    ws.binaryType = "blob";
    S.ws = ws;
    S.closeInfo = null;
    setStatus("connecting", "connecting…");
    ws.onopen = () => { S.connected = true; };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") onText(ev.data);
      else onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      S.connected = false;
      S.inFlight = [];
      S.closeInfo = { code: ev.code, reason: ev.reason };
      if (ev.code === 1013) {
        setStatus("busy", "busy — click to retry");
        showMessage(ev.reason || "the server has no free session; try again later", "busy");
      } else {
        setStatus("closed", `disconnected (${ev.code}) — click to reconnect`);
        if (ev.reason) showMessage(ev.reason, `close ${ev.code}`);
      }
    };
  }

  $("status").addEventListener("click", () => {
    if (!S.connected) connect();
  });

  function onText(text) {
    let msg;
    try { msg = JSON.parse(text); } catch (e) { showMessage("unparsable server message", "client"); return; }
    switch (msg.type) {
      case "hello": onHello(msg); break;
      case "clip": onClipHeader(msg); break;
      case "pong":
        if (typeof msg.t_client === "number") S.rttMs = performance.now() - msg.t_client;
        $("status").title = S.rttMs === null ? "" : `round trip ${S.rttMs.toFixed(1)} ms`;
        break;
      case "error":
        showMessage(msg.message, msg.code);
        if (msg.ref === "action" || msg.code === "not_reset") {
          // which action failed is not said: forget them all (a late clip of one is still shown)
          S.inFlight = [];
          S.retryAt = performance.now() + CFG.errorBackoffMs;  // no request storm when every clip fails
        }
        if (msg.ref === "reset") S.resetPending = false;
        break;
      default:
        showMessage(`unknown server message type ${msg.type}`, "client");
    }
  }

  function onHello(h) {
    S.hello = h;
    const n = h.max_in_flight;
    S.maxInFlight = Number.isInteger(n) && n >= 1 ? Math.min(n, CFG.maxInFlight) : CFG.defaultInFlight;
    screen.width = h.width;
    screen.height = h.height;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, h.width, h.height);
    setStatus("connected", `connected · session ${h.session}`);
    const sel = $("start-image");
    const previous = sel.value;
    sel.textContent = "";
    for (const name of h.builtins) sel.add(new Option(name.replace(/_/g, " "), `builtin:${name}`));
    sel.add(new Option("upload an image…", "upload"));
    if (previous && [...sel.options].some((o) => o.value === previous)) sel.value = previous;
    if (sel.value === "upload" && !S.upload) sel.selectedIndex = 0;
    onStartChoice(false);
    doReset();
  }

  function onClipHeader(h) {
    if (S.framesLeft > 0) showMessage(`clip ${h.clip} started before ${S.framesLeft} frames arrived`, "client");
    S.header = h;
    S.framesLeft = h.n_frames;
    S.frameIdx = 0;
    S.clipsReceived += 1;
    if (h.reset) {
      S.episode = h.episode;
      S.resetPending = false;
      S.poses = [];
      S.memFrames = [];
      S.shownIndex = -1;
      S.expect = null;
      S.ditEnd = null;
      dropQueue();
    }
    h.stale = h.episode !== S.episode || (S.resetPending && !h.reset);  // an older episode's clip
    if (h.stale) return;
    checkOrder(h);
    for (let i = 0; i < h.poses.length; i++) S.poses[h.frame_start + i] = h.poses[i];
    S.memFrames = (h.memory && Array.isArray(h.memory.frames)) ? h.memory.frames : [];
    if (typeof h.seq === "number") settleActions(h, performance.now());
    $("gen").textContent = h.timings && typeof h.timings.generate_s === "number"
      ? `${(h.timings.generate_s * 1000).toFixed(0)} ms` : "–";
    $("dropped").textContent = String(h.dropped_frames || 0);
  }

  function checkOrder(h) {
    // clips of an episode arrive in order, each starting where the previous ended (a gap = dropped clips)
    if (S.expect && (h.clip !== S.expect.clip || h.frame_start !== S.expect.frame)) S.gaps += 1;
    S.expect = { clip: h.clip + 1, frame: h.frame_start + h.n_frames };
    S.clipLog.push({ episode: h.episode, clip: h.clip, frame_start: h.frame_start, n_frames: h.n_frames,
                     seq: h.seq, coalesced: h.coalesced, dropped_frames: h.dropped_frames,
                     in_flight: S.inFlight.length });  // as it arrived, its own action included
    if (S.clipLog.length > CFG.logClips) S.clipLog.shift();
  }

  function settleActions(h, now) {
    // the clip answers action h.seq (and every earlier one coalesced into it). Its timings say how long
    // the server's DiT took and when it finished (server durations counted back from the arrival; the
    // transfer is neglected). Sent alone, its round trip updates L (mean and mean deviation).
    const a = S.inFlight.find((x) => x.seq === h.seq);
    S.inFlight = S.inFlight.filter((x) => x.seq > h.seq);
    const w = CFG.leadSmoothing, tm = h.timings || {};
    const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
    const dit = num(tm.dit_s), gen = num(tm.generate_s);
    if (dit !== null && gen !== null) {
      S.ditMs = S.ditMs === null ? 1000 * dit : (1 - w) * S.ditMs + w * 1000 * dit;
      S.ditEnd = now - 1000 * (gen + (num(tm.encode_s) || 0) + (num(tm.queue_s) || 0) - dit);
    }
    if (!a || !a.alone) return;
    const rt = now - a.t;
    S.leadDevMs = (1 - w) * S.leadDevMs + w * Math.abs(rt - S.leadMs);
    S.leadMs = (1 - w) * S.leadMs + w * rt;
  }

  function onFrame(blob) {
    const h = S.header;
    if (!h || S.framesLeft <= 0) { showMessage("frame without a clip header", "client"); return; }
    const i = S.frameIdx++;
    S.framesLeft -= 1;
    if (h.stale) return;
    const item = { header: h, index: i, global: h.frame_start + i, pose: h.poses[i] || null };
    const decoded = createImageBitmap(blob);
    S.decoding += 1;
    S.decodeChain = S.decodeChain  // decodes run in parallel, frames enter the queue in order
      .then(() => decoded)
      .then((bitmap) => {
        if (item.header.episode !== S.episode) { bitmap.close(); return; }
        item.bitmap = bitmap;
        S.queue.push(item);
      })
      .catch((e) => showMessage(`cannot decode frame: ${e}`, "client"))
      .finally(() => { S.decoding -= 1; });
  }

  function dropQueue() {
    for (const f of S.queue) f.bitmap.close();
    S.queue = [];
    S.rebuffering = true;
  }

  // ---- actions -----------------------------------------------------------------------------

  function clamp(v, lim) { return Math.max(-lim, Math.min(lim, v)); }

  function currentMouse() {
    // [pitch, yaw] per frame. Positive pitch looks down, positive yaw turns right (MG3 convention).
    let pitch = 0, yaw = 0;
    if (S.arrows.has("ArrowUp")) pitch -= CFG.arrowMouse;
    if (S.arrows.has("ArrowDown")) pitch += CFG.arrowMouse;
    if (S.arrows.has("ArrowLeft")) yaw -= CFG.arrowMouse;
    if (S.arrows.has("ArrowRight")) yaw += CFG.arrowMouse;
    // pointer movement since the last action, spread over the next clip's frames
    const frames = S.hello ? S.hello.frames_per_clip : 16;
    const unit = CFG.degPerMouseUnit * frames;
    pitch += (S.pointer[1] * CFG.mouseDegPerPixel) / unit;
    yaw += (S.pointer[0] * CFG.mouseDegPerPixel) / unit;
    const lim = S.hello ? S.hello.mouse_limit : 0.5;
    return [clamp(pitch, lim), clamp(yaw, lim)];
  }

  function activeKeys() {
    const keys = new Set([...S.held, ...S.tapped]);
    return S.hello ? S.hello.keys.filter((k) => keys.has(k)) : [...keys];
  }

  function ditFreeAt() {
    // when the server's DiT will have sampled every action in flight (-Infinity: nothing in flight).
    // Unknown DiT time (no clip yet): a whole round trip each
    let free = S.ditEnd === null ? -Infinity : S.ditEnd;
    for (const a of S.inFlight) free = Math.max(a.t, free) + (S.ditMs === null ? S.leadMs : S.ditMs);
    return S.inFlight.length ? free : -Infinity;
  }

  function sendAction() {
    const mouse = currentMouse();
    const keys = activeKeys();
    S.seq += 1;
    const t = performance.now();
    if (!send({ type: "action", keys, mouse, seq: S.seq, t_client: t })) return;
    S.inFlight.push({ seq: S.seq, t, keys, mouse, alone: S.inFlight.length === 0 });
    S.actionsSent += 1;
    S.inFlightPeak = Math.max(S.inFlightPeak, S.inFlight.length);
    S.tapped.clear();
    S.pointer = [0, 0];
  }

  function slackMs() {
    return CFG.jitterFactor * S.leadDevMs + CFG.requestMarginMs;
  }

  function committedFrames() {
    // frames that will be shown before a clip requested now: buffered, decoding, still arriving, in flight
    const arriving = S.header && !S.header.stale ? Math.max(0, S.framesLeft) : 0;
    return S.queue.length + S.decoding + arriving + S.inFlight.length * S.hello.frames_per_clip;
  }

  function maybeRequest(now) {
    if (!S.connected || S.paused || !S.hello || S.episode === 0 || S.resetPending || now < S.retryAt) return;
    S.inFlight = S.inFlight.filter((a) => now - a.t <= CFG.outstandingTimeoutMs);  // lost: stop waiting
    if (S.inFlight.length >= S.maxInFlight) return;
    const free = ditFreeAt();
    if (now < free - CFG.holdGuardMs) return;  // it would only wait on the server: sample the keys later
    // request when the committed video runs out before the requested clip would arrive (+ slack)
    const arrival = Math.max(now, free) + S.leadMs;
    if (committedFrames() * (1000 / S.hello.fps) <= arrival - now + slackMs()) sendAction();
  }

  function doReset() {
    const sel = $("start-image").value;
    let image = null;
    if (sel === "upload") {
      if (!S.upload) { showMessage("choose an image file to upload first", "client"); return; }
      image = S.upload;
    } else if (sel) {
      image = sel;
    }
    const prompt = $("prompt").value.trim();
    if (send({ type: "reset", prompt: prompt === "" ? null : prompt, image })) {
      S.resetPending = true;
      S.inFlight = [];  // their clips belong to the old episode
      dropQueue();
    }
  }

  $("reset").addEventListener("click", () => { doReset(); screen.focus(); });
  $("pause").addEventListener("click", togglePause);

  function togglePause() {
    S.paused = !S.paused;
    $("pause").textContent = S.paused ? "Resume" : "Pause";
  }

  // ---- start image ------------------------------------------------------------------------------

  function onStartChoice(openPicker) {
    const v = $("start-image").value;
    if (v === "upload") {
      if (openPicker) $("upload").click();
      if (S.upload) $("start-preview").src = S.upload;
      $("prompt").placeholder = "describe the uploaded scene";
      return;
    }
    if (!v.startsWith("builtin:")) return;
    const name = v.slice("builtin:".length);
    $("start-preview").src = `/builtin/${encodeURIComponent(name)}.png`;
    fetch(`/builtin/${encodeURIComponent(name)}.json`)
      .then((r) => (r.ok ? r.json() : null))
      .then((j) => { if (j && $("start-image").value === v) $("prompt").placeholder = j.prompt; })
      .catch(() => {});
  }

  $("start-image").addEventListener("change", () => onStartChoice(true));

  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (!file) return;
    if (!["image/png", "image/jpeg"].includes(file.type)) {
      showMessage(`${file.name}: only PNG or JPEG images`, "upload");
      return;
    }
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      // downscale in the browser: the model works at a few hundred pixels at most
      const s = Math.min(1, CFG.uploadMaxSide / Math.max(img.width, img.height));
      const c = document.createElement("canvas");
      c.width = Math.max(1, Math.round(img.width * s));
      c.height = Math.max(1, Math.round(img.height * s));
      c.getContext("2d").drawImage(img, 0, 0, c.width, c.height);
      URL.revokeObjectURL(url);
      const dataUrl = c.toDataURL("image/jpeg", 0.92);
      const limit = S.hello ? S.hello.limits.max_image_bytes : Infinity;
      if ((dataUrl.length * 3) / 4 > limit) {
        showMessage(`${file.name}: still larger than ${limit} bytes after downscaling`, "upload");
        return;
      }
      S.upload = dataUrl;
      $("start-preview").src = dataUrl;
      showMessage(`${file.name} ready (${c.width}x${c.height}); press Reset to start from it`, "", "info");
    };
    img.onerror = () => { URL.revokeObjectURL(url); showMessage(`${file.name}: cannot read image`, "upload"); };
    img.src = url;
  });

  // ---- input ------------------------------------------------------------------------------

  function typing(ev) {
    const t = ev.target;
    return t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT");
  }

  document.addEventListener("keydown", (ev) => {
    if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = KEY_CODES[ev.code];
    if (key) { S.held.add(key); S.tapped.add(key); ev.preventDefault(); }
    else if (ARROWS.includes(ev.code)) { S.arrows.add(ev.code); ev.preventDefault(); }
    else if (ev.code === "KeyP" && !ev.repeat) togglePause();
    $("overlay").classList.add("hidden");
  });
  document.addEventListener("keyup", (ev) => {
    const key = KEY_CODES[ev.code];
    if (key) S.held.delete(key);
    else if (ARROWS.includes(ev.code)) S.arrows.delete(ev.code);
  });
  window.addEventListener("blur", () => { S.held.clear(); S.arrows.clear(); });  // no stuck keys

  screen.addEventListener("click", () => {
    screen.focus();
    if (!S.locked && screen.requestPointerLock) {
      try {
        const p = screen.requestPointerLock();
        if (p && p.catch) p.catch(() => {});
      } catch (e) { /* pointer lock unavailable: keys still work */ }
    }
  });
  document.addEventListener("pointerlockchange", () => {
    S.locked = document.pointerLockElement === screen;
    $("overlay").classList.toggle("hidden", S.locked);
    if (!S.locked) S.held.delete("Attack");
  });
  document.addEventListener("mousemove", (ev) => {
    if (!S.locked) return;
    S.pointer[0] += ev.movementX;
    S.pointer[1] += ev.movementY;
  });
  screen.addEventListener("mousedown", (ev) => {
    if (S.locked && ev.button === 0) { S.held.add("Attack"); S.tapped.add("Attack"); }
  });
  document.addEventListener("mouseup", (ev) => { if (ev.button === 0) S.held.delete("Attack"); });

  // ---- drawing ------------------------------------------------------------------------------

  function noteShown(item) {
    // display order: within an episode every frame follows the previous one (skipped ones included)
    const last = S.lastDrawn;
    if (last && last.episode === item.header.episode && item.global !== last.global + 1) S.orderErrors += 1;
    S.lastDrawn = { episode: item.header.episode, global: item.global };
  }

  function drawFrame(item, now) {
    ctx.drawImage(item.bitmap, 0, 0, screen.width, screen.height);
    item.bitmap.close();
    noteShown(item);
    S.framesDrawn += 1;
    S.shownIndex = item.global;
    S.lastHeader = item.header;
    if (item.pose) {
      S.lastPose = item.pose;
      const [x, y, z, pitch, yaw] = item.pose;
      const el = $("pose");
      el.textContent = `x ${x.toFixed(0)}  y ${y.toFixed(0)}  z ${z.toFixed(0)}  `
        + `pitch ${pitch.toFixed(1)}°  yaw ${yaw.toFixed(1)}°`;
      el.dataset.pose = JSON.stringify(item.pose);
    }
    if (item.index === 0 && !item.header.reset && typeof item.header.t_client === "number") {
      const lat = now - item.header.t_client;  // action sent -> first frame of its clip shown
      S.latencyMs = S.latencyMs === null ? lat : 0.8 * S.latencyMs + 0.2 * lat;
      S.latencies.push(lat);
      if (S.latencies.length > CFG.logClips) S.latencies.shift();
      $("latency").textContent = `${S.latencyMs.toFixed(0)} ms`;
    }
    $("clip").textContent = `${item.header.clip}·${item.index}`;
    S.drawTimes.push(now);
  }

  function drawKeysHud() {
    const active = new Set([...S.held, ...S.tapped]);
    for (const el of document.querySelectorAll("#keys .key")) el.classList.toggle("on", active.has(el.dataset.key));
    const [pitch, yaw] = currentMouse();
    const w = mouseHud.width, r = w / 2 - 4;
    hctx.clearRect(0, 0, w, w);
    const lim = CFG.arrowMouse;
    const dx = clamp(yaw / lim, 1) * r, dy = clamp(pitch / lim, 1) * r;
    const on = Math.abs(pitch) >= 0.02 || Math.abs(yaw) >= 0.02;  // MG3's dead zone
    hctx.strokeStyle = on ? "#f5c542" : "#555b66";
    hctx.lineWidth = 3;
    hctx.beginPath();
    hctx.moveTo(w / 2, w / 2);
    hctx.lineTo(w / 2 + dx, w / 2 + dy);
    hctx.stroke();
    hctx.fillStyle = on ? "#f5c542" : "#8b92a0";
    hctx.beginPath();
    hctx.arc(w / 2 + dx, w / 2 + dy, 4, 0, 2 * Math.PI);
    hctx.fill();
  }

  function drawMinimap() {
    const W = mini.width, H = mini.height, pad = 14;
    mctx.fillStyle = "#101216";
    mctx.fillRect(0, 0, W, H);
    const pts = [];
    for (let i = 0; i < S.poses.length; i++) if (S.poses[i]) pts.push([i, S.poses[i]]);
    if (pts.length === 0) return;
    // pose units are cm-scale; top-down view with world +X up and +Y right (MG3: X forward, Y right)
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const [, p] of pts) {
      minX = Math.min(minX, p[0]); maxX = Math.max(maxX, p[0]);
      minY = Math.min(minY, p[1]); maxY = Math.max(maxY, p[1]);
    }
    const span = Math.max(maxX - minX, maxY - minY, 500);
    const scale = (Math.min(W, H) - 2 * pad) / span;
    const cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
    const map = (p) => [W / 2 + (p[1] - cy) * scale, H / 2 - (p[0] - cx) * scale];
    // grid: one line per metre (100 pose units) when it is not too dense
    if (100 * scale >= 6) {
      mctx.strokeStyle = "#1c2027";
      mctx.lineWidth = 1;
      mctx.beginPath();
      for (let gx = Math.ceil((cy - W / 2 / scale) / 100) * 100; gx < cy + W / 2 / scale; gx += 100) {
        const sx = W / 2 + (gx - cy) * scale;
        mctx.moveTo(sx, 0); mctx.lineTo(sx, H);
      }
      for (let gy = Math.ceil((cx - H / 2 / scale) / 100) * 100; gy < cx + H / 2 / scale; gy += 100) {
        const sy = H / 2 - (gy - cx) * scale;
        mctx.moveTo(0, sy); mctx.lineTo(W, sy);
      }
      mctx.stroke();
    }
    // path: received (dim) and shown (bright)
    for (const [shown, colour] of [[false, "#34506f"], [true, "#6ea8fe"]]) {
      mctx.strokeStyle = colour;
      mctx.lineWidth = 2;
      mctx.beginPath();
      let started = false;
      for (const [i, p] of pts) {
        if (shown && i > S.shownIndex) break;
        const [sx, sy] = map(p);
        if (!started) { mctx.moveTo(sx, sy); started = true; } else mctx.lineTo(sx, sy);
      }
      mctx.stroke();
    }
    // retrieved memory frames of the last clip
    mctx.strokeStyle = "#ff6bd6";
    mctx.lineWidth = 2;
    for (const f of S.memFrames) {
      const p = S.poses[f];
      if (!p) continue;
      const [sx, sy] = map(p);
      mctx.beginPath();
      mctx.arc(sx, sy, 5, 0, 2 * Math.PI);
      mctx.stroke();
    }
    // camera: position + heading (yaw 0 faces +X = up; positive yaw turns right)
    const cur = S.lastPose || pts[pts.length - 1][1];
    const [sx, sy] = map(cur);
    const yaw = (cur[4] * Math.PI) / 180;
    const hx = Math.sin(yaw), hy = -Math.cos(yaw);
    mctx.fillStyle = "#f5c542";
    mctx.beginPath();
    mctx.moveTo(sx + hx * 10, sy + hy * 10);
    mctx.lineTo(sx - hx * 4 - hy * 5, sy - hy * 4 + hx * 5);
    mctx.lineTo(sx - hx * 4 + hy * 5, sy - hy * 4 - hx * 5);
    mctx.closePath();
    mctx.fill();
  }

  // ---- main loop ------------------------------------------------------------------------------

  function tick(now) {
    if (S.hello) {
      const frameMs = 1000 / S.hello.fps;
      // the request rule bounds the buffer; far beyond it (a hidden tab stopped playback) skip ahead
      const maxQueue = Math.ceil((S.leadMs + slackMs()) / frameMs) + CFG.maxBufferClips * S.hello.frames_per_clip;
      while (S.queue.length > maxQueue) {
        const item = S.queue.shift();
        item.bitmap.close();
        noteShown(item);
        S.skippedFrames += 1;
      }
      if (S.queue.length === 0) S.rebuffering = true;
      if (S.rebuffering && S.queue.length > 0) {
        // resume once prebufferMs is buffered, or when nothing more is on its way
        const want = Math.min(Math.ceil(CFG.prebufferMs / frameMs), S.hello.frames_per_clip);
        const more = S.decoding + (S.header && !S.header.stale ? Math.max(0, S.framesLeft) : 0);
        if (S.queue.length >= want || more === 0) {
          S.rebuffering = false;
          S.nextDrawAt = now;
        }
      }
      if (S.nextDrawAt < now - frameMs) S.nextDrawAt = now;  // late (a slow tick): no catch-up burst
      let drew = false;
      if (!S.rebuffering && now >= S.nextDrawAt) {
        drawFrame(S.queue.shift(), now);
        S.nextDrawAt += frameMs;
        drew = true;
      }
      maybeRequest(now);
      while (S.drawTimes.length && S.drawTimes[0] < now - 1000) S.drawTimes.shift();
      $("fps").textContent = String(S.drawTimes.length);
      $("buffer").textContent = `${S.queue.length} fr`;
      $("inflight").textContent = `${S.inFlight.length}/${S.maxInFlight}`;
      if (drew) drawMinimap();
    }
    drawKeysHud();
    requestAnimationFrame(tick);
  }

  setInterval(() => { send({ type: "ping", t_client: performance.now() }); }, CFG.pingEveryMs);
  connect();
  requestAnimationFrame(tick);
})();
